"""Helpers for plugin authors: parse a job's ``executor_config`` or processor config.

Every value of such a config is a string (the core turns JSON numbers and booleans into
``"3"`` and ``"true"``, and ``null`` into ``""``). These helpers parse the kinds of value the
bundled plugins share, the way Dkron's Go plugins read them, and raise
:class:`~dkron.contracts.ConfigError` with a message that says what to fix and the ``key`` at
fault, so the API can answer 400 with ``executor_config.<key>: <message>``.

* :func:`parse_bool`: Go's ``strconv.ParseBool`` spellings (``true``, ``1``, ``F``, ...).
* :func:`parse_duration`: Go durations (``30s``, ``1h30m``, ``500ms``) and plain seconds.
* :func:`check_keys`: reject unknown keys, with a "did you mean" hint for a near miss.
* :func:`parse_forward`: the ``forward`` flag of processors (keep the output or replace it).
* :func:`cached`: cache ``parse_config`` by the config's items, since every run of a job
  parses the same config again.

Nothing here does I/O, so all of it may be used in ``validate``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Generic, TypeVar

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest, ExecutionResult

__all__ = [
    "FALSE_SPELLINGS",
    "TRUE_SPELLINGS",
    "CachedParser",
    "cached",
    "check_keys",
    "guarded_execute",
    "parse_bool",
    "parse_duration",
    "parse_forward",
]

#: What ``strconv.ParseBool`` (and so Dkron) reads as true, and as false; nothing else is a bool.
TRUE_SPELLINGS = frozenset({"1", "t", "T", "TRUE", "true", "True"})
FALSE_SPELLINGS = frozenset({"0", "f", "F", "FALSE", "false", "False"})

# Go's time.ParseDuration units, in seconds ("µ" appears in two Unicode spellings, both accepted by Go).
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
#: A plain number of seconds, written like the number of a Go duration: ``30``, ``2.5``, ``1.``, ``.5``.
_SECONDS = re.compile(r"\d+\.?\d*|\.\d+")

T = TypeVar("T")


def parse_bool(value: str, key: str, *, default: bool | None = None) -> bool:
    """``value`` read as Go's ``strconv.ParseBool`` does (:data:`TRUE_SPELLINGS`, :data:`FALSE_SPELLINGS`).

    Surrounding whitespace is ignored. An empty value gives ``default``; without a default it
    is an error, as is any other spelling (``yes``, ``on``) or a value that is not a string:
    ``ConfigError("<key> must be true or false, got '<value>'", key=key)``.
    """
    if isinstance(value, str):
        text = value.strip()
        if text in TRUE_SPELLINGS:
            return True
        if text in FALSE_SPELLINGS:
            return False
        if not text and default is not None:
            return default
    raise ConfigError(f"{key} must be true or false, got {value!r}", key=key)


def parse_forward(config: Mapping[str, str]) -> bool:
    """A processor's ``forward`` flag: true keeps the execution's output, false (the default) replaces it.

    Dkron's processors replace the output with a placeholder unless ``forward`` is true. The
    value is read by :func:`parse_bool`; an empty or missing ``forward`` is false.
    """
    return parse_bool(config.get("forward", ""), "forward", default=False)


def _go_seconds(text: str, seconds: bool | re.Pattern[str]) -> float | None:
    """``text`` (stripped, unsigned) in seconds, or ``None`` when it is no duration."""
    if seconds is not False and (_SECONDS if seconds is True else seconds).fullmatch(text):
        return float(text)
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if text else None


def _format_duration(seconds: float) -> str:
    """Seconds as a short Go-style duration for messages: 86400 -> ``24h``, 90 -> ``1m30s``, 0.5 -> ``500ms``."""
    if seconds < 0:
        return "-" + _format_duration(-seconds)
    if 0 < seconds < 1:
        for unit, size in (("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
            if seconds >= size or unit == "ns":
                return f"{round(seconds / size, 9):g}{unit}"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours:.0f}h" if hours else "") + (f"{minutes:.0f}m" if minutes else "")
    return text + (f"{round(secs, 9):g}s" if secs or not text else "")


def parse_duration(
    value: str,
    key: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    seconds: bool | re.Pattern[str] = True,
    signed: bool = False,
    expected: str | None = None,
) -> float:
    """``value`` in seconds: a Go duration (``30s``, ``1h30m``, ``1.5s``, ``500ms``, ``100us``) or plain seconds.

    Whitespace around ``value`` is ignored. The units are Go's: ``ns``, ``us`` (or ``µs``),
    ``ms``, ``s``, ``m``, ``h``; a duration is one or more number-and-unit parts, with no spaces.

    * ``seconds``: whether a bare number (``30``, ``2.5``, ``.5``) means seconds. ``False``
      refuses it, as Go does; a compiled pattern accepts only the numbers it fully matches
      (``re.compile(r"\\d+(\\.\\d+)?")`` refuses ``1.`` and ``.5``).
    * ``signed``: accept a leading ``+`` or ``-`` (as Go does). A negative value then fails the
      lower bound instead of being called "not a duration".
    * ``minimum``: the smallest value allowed, in seconds. ``None`` (the default) requires a value
      greater than zero (``<key> must be greater than zero``); a number allows values from it on
      (``<key> must be at least 5s``).
    * ``maximum``: the largest value allowed, in seconds (``<key> must be at most 24h``).
    * ``expected``: what the message for an unreadable value says the key must be; the default
      is ``seconds or a duration such as 30s or 500ms`` (``a duration such as 30s, 1h30m or
      500ms`` when ``seconds`` is false).

    ``dkron.config.parse_duration`` (the agent's options) is not used here: it knows only
    ``h``/``m``/``s``/``ms``, reads ``1e3`` as seconds, allows zero and raises the agent's own
    ``ConfigError``, where plugins need Go's units and :class:`~dkron.contracts.ConfigError`.
    """
    text = value.strip()
    negative = signed and text[:1] == "-"
    body = text[1:] if signed and text[:1] in ("+", "-") else text
    total = _go_seconds(body, seconds)
    if total is None:
        if expected is None:
            expected = (
                "seconds or a duration such as 30s or 500ms" if seconds else "a duration such as 30s, 1h30m or 500ms"
            )
        raise ConfigError(f"{key} must be {expected}, got {value!r}", key=key)
    if negative:
        total = -total
    if minimum is None:
        if not total > 0 or not math.isfinite(total):
            raise ConfigError(f"{key} must be greater than zero, got {value!r}", key=key)
    elif not total >= minimum or not math.isfinite(total):
        raise ConfigError(f"{key} must be at least {_format_duration(minimum)}, got {value!r}", key=key)
    if maximum is not None and total > maximum:
        raise ConfigError(f"{key} must be at most {_format_duration(maximum)}, got {value!r}", key=key)
    return total


def check_keys(
    config: Mapping[str, object],
    allowed: Iterable[str],
    *,
    aliases: Mapping[str, str] | None = None,
    unsupported: Mapping[str, str] | None = None,
    suggest: bool = True,
    known: str | None = None,
    strings: bool = False,
) -> None:
    """Raise :class:`~dkron.contracts.ConfigError` for the first key of ``config`` that is not allowed.

    The message is ``unknown key 'tiemout'; did you mean 'timeout'?`` when a key in ``allowed``
    is close enough (``difflib``), else ``unknown key 'x' (known keys: a, b, c)``, listing
    ``allowed`` in its order (a set is listed sorted). Keys are checked in the config's order.

    * ``aliases``: other accepted spellings, each mapped to the key it stands for (such as
      Dkron's documented spelling of a key). They are not listed; a near miss of one suggests
      the key it stands for. Normalising them is up to the plugin.
    * ``unsupported``: keys that are recognised but refused, each mapped to the whole message
      (``{"su": "su is not supported by this executor"}``).
    * ``suggest``: ``False`` leaves the hint out, so the message always lists the keys.
    * ``known``: the text in the parentheses instead of ``known keys: a, b, c``.
    * ``strings``: also require every value to be a string (``<key> must be a string``).
    """
    allowed_keys = sorted(allowed) if isinstance(allowed, Set) else list(allowed)
    accepted = {*allowed_keys, *(aliases or {})}
    for key, value in config.items():
        if unsupported and key in unsupported:
            raise ConfigError(unsupported[key], key=key)
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1) if suggest else []
            if close:
                hint = (aliases or {}).get(close[0], close[0])
                raise ConfigError(f"unknown key {key!r}; did you mean {hint!r}?", key=key)
            listing = known if known is not None else f"known keys: {', '.join(allowed_keys)}"
            raise ConfigError(f"unknown key {key!r} ({listing})", key=key)
        if strings and not isinstance(value, str):
            raise ConfigError(f"{key} must be a string", key=key)


class CachedParser(Generic[T]):
    """``build`` with a cache in front; see :func:`cached`."""

    def __init__(
        self,
        build: Callable[[Mapping[str, str]], T],
        maxsize: int,
        max_chars: int | None,
        size: Callable[[Mapping[str, str]], int] | None,
    ) -> None:
        self.__wrapped__ = build
        self._max_chars = max_chars
        self._size = size
        self._from_items = functools.lru_cache(maxsize=maxsize)(self._build_items)

    def _build_items(self, items: tuple[tuple[str, str], ...]) -> T:
        return self.__wrapped__(dict(items))

    def __call__(self, config: Mapping[str, str]) -> T:
        try:
            items = tuple(sorted(config.items()))
            hash(items)
        except TypeError:  # unhashable values, or keys that do not sort: build uncached, which names the key
            return self.__wrapped__(config)
        # Only strings are measured; a config with another value is built (and refused) via the cache path.
        if self._max_chars is not None and all(isinstance(value, str) for _, value in items):
            size = self._size(config) if self._size else sum(len(value) for _, value in items)
            if size > self._max_chars:
                return self.__wrapped__(config)  # keep big configs (message bodies, payloads) out of the cache
        return self._from_items(items)

    def cache_info(self) -> functools._CacheInfo:
        return self._from_items.cache_info()

    def cache_clear(self) -> None:
        self._from_items.cache_clear()

    def __repr__(self) -> str:
        return f"cached({getattr(self.__wrapped__, '__qualname__', self.__wrapped__)!r})"


def cached(
    build: Callable[[Mapping[str, str]], T],
    /,
    *,
    maxsize: int = 1024,
    max_chars: int | None = 65536,
    size: Callable[[Mapping[str, str]], int] | None = None,
) -> CachedParser[T]:
    """Wrap ``build(config)`` (a config parser) in a cache keyed by the config's sorted items.

    Use it for the ``parse_config`` an executor calls on every run: ``parse_config =
    cached(_build)``. ``build`` must return an immutable value (a frozen dataclass), since one
    result is shared by every run, thread and caller with an equal config. Exceptions are not
    cached: a bad config is parsed, and reported, each time.

    Through the cache, ``build`` gets a plain dict of the items in sorted key order. A config
    is parsed without the cache (``build`` gets it as passed) when a value cannot be hashed, or
    when its string values are bigger than ``max_chars`` (``None``: no limit), measured by
    ``size(config)`` (default: the length of all values together), so that large message
    bodies are not kept. ``maxsize`` bounds the number of configs kept (least recently used go
    first). The wrapper has ``cache_info()`` and ``cache_clear()``; ``__wrapped__`` is ``build``.
    """
    return CachedParser(build, maxsize, max_chars, size)


def guarded_execute(
    name: str,
    request: ExecutionRequest,
    cancel: CancelToken,
    parse: Callable[[Mapping[str, str]], T],
    body: Callable[[T], ExecutionResult],
) -> ExecutionResult:
    """The frame of an executor's ``execute``: parse the config, honour a kill that came first,
    run ``body(config)``, and turn any failure into a failed result instead of an exception.

    An executor must never raise into the agent's worker thread; its errors read
    ``"<name>: invalid config: ..."``, ``"<name>: killed: <reason>"`` or ``"<name>: internal
    error: ..."`` (the last one also logged with its traceback).
    """
    try:
        config = parse(request.config)
    except ConfigError as exc:  # the core normally validated already; report, never raise
        return ExecutionResult(success=False, error=f"{name}: invalid config: {exc}")
    if cancel.cancelled:
        return ExecutionResult(success=False, error=f"{name}: killed: {cancel.reason}")
    try:
        return body(config)
    except Exception as exc:  # a bug here must not take the worker thread down
        logging.getLogger(f"dkron_executor_{name}").exception("%s: job %s failed unexpectedly", name, request.job_name)
        return ExecutionResult(success=False, error=f"{name}: internal error: {exc!r}")
