"""Parsing and validation of the shell executor's ``executor_config``.

Every value arrives as a string (Dkron's contract). ``validate_config`` runs at job submission
(no I/O allowed there) and ``parse_config`` turns a validated config into a :class:`ShellConfig`
for ``execute``; the latter is cached because the same job config is parsed on every run.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from dkron import pluginkit
from dkron.contracts import ConfigError, ConfigField

__all__ = [
    "CONFIG_SCHEMA",
    "KNOWN_KEYS",
    "ShellConfig",
    "parse_config",
    "parse_duration",
    "parse_env",
    "parse_mem_limit",
    "parse_success_codes",
    "validate_config",
]

KNOWN_KEYS = frozenset(
    {"command", "shell", "env", "secret_env", "cwd", "timeout", "mem_limit", "payload", "success_codes"}
)

#: The config's fields as forms show them (validation stays in ``validate_config``).
CONFIG_SCHEMA = (
    ConfigField("command", "Command", required=True, placeholder="/usr/local/bin/backup --all"),
    ConfigField("shell", "Run through /bin/sh", kind="bool", default="false", help="pipes, globs and && need it"),
    ConfigField("env", "Environment", kind="textarea", help="JSON object or K1=v1,K2=v2", placeholder='{"LANG": "C"}'),
    ConfigField("cwd", "Working directory", placeholder="/srv/app"),
    ConfigField("timeout", "Timeout", kind="duration", help="Go duration such as 30s or 1h30m", placeholder="1h"),
    ConfigField("mem_limit", "Memory limit", help="e.g. 512MB", placeholder="512MB"),
    ConfigField("payload", "Standard input (base64)", kind="textarea"),
    ConfigField("success_codes", "Success exit codes", help="comma-separated, default 0", placeholder="0"),
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_MEM_UNITS = {
    "": 1,
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
}
_MEM = re.compile(r"(\d+\.?\d*|\.\d+)\s*([a-z]*)\Z")


@dataclass(frozen=True)
class ShellConfig:
    """A parsed, ready-to-run config (immutable so the parse cache can share it across threads)."""

    argv: tuple[str, ...]
    command: str
    env: tuple[tuple[str, str], ...]
    cwd: str | None
    timeout: float | None
    timeout_text: str
    mem_limit: int | None
    payload: bytes | None
    success_codes: frozenset[int]


def parse_duration(value: str, key: str = "timeout") -> float:
    """Parse a Go duration (``30s``, ``1h30m``, ``1.5s``, ``500ms``) to seconds; must be > 0.

    As in Go, a sign is accepted (a negative duration fails as not greater than zero) and a bare
    number is not: ``10`` is refused, not read as seconds.
    """
    return pluginkit.parse_duration(value, key, seconds=False, signed=True)


def parse_mem_limit(value: str, key: str = "mem_limit") -> int:
    """Bytes, or a number with unit B/BYTES/K/KB/M/MB/G/GB/T/TB (1024-based); must be > 0."""
    match = _MEM.match(value.strip().lower())
    if match is None or match.group(2) not in _MEM_UNITS:
        raise ConfigError(f"{key} must be a size such as 512MB, 1.5G or 1048576, got {value!r}", key=key)
    size = int(float(match.group(1)) * _MEM_UNITS[match.group(2)])
    if size <= 0:
        raise ConfigError(f"{key} must be greater than zero, got {value!r}", key=key)
    return size


def _check_env_pair(name: str, value: str) -> None:
    if not _ENV_NAME.match(name):
        raise ConfigError(f"env: {name!r} is not a valid environment variable name", key="env")
    if "\0" in value:
        raise ConfigError(f"env: the value of {name} contains a NUL byte", key="env")


def parse_env(value: str) -> tuple[tuple[str, str], ...]:
    """Parse ``env``: a JSON object, or Dkron's ``K1=v1,K2=v2`` form.

    Dkron splits on every comma, so values cannot contain one. Here a comma-separated piece
    without ``=`` continues the previous value (``A=x,y,B=z`` gives ``A="x,y"``); values that
    need ``,K=`` inside them can use the JSON form instead.
    """
    text = value.strip()
    if not text:
        return ()
    if text.startswith(("{", "[")):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"env is not valid JSON: {exc}", key="env") from None
        if not isinstance(obj, dict):
            raise ConfigError("env JSON must be an object of NAME: value", key="env")
        pairs: list[tuple[str, str]] = []
        for name, raw in obj.items():
            if isinstance(raw, bool):  # before int: bool is an int subclass
                val = "true" if raw else "false"
            elif isinstance(raw, str | int | float):
                val = str(raw)
            else:
                raise ConfigError(f"env: the value of {name} must be a string", key="env")
            _check_env_pair(name, val)
            pairs.append((name, val))
        return tuple(pairs)
    entries: list[list[str]] = []
    for piece in value.split(","):
        if "=" in piece:
            name, val = piece.split("=", 1)
            entries.append([name.strip(), val])
        elif not piece.strip():
            continue  # "A=1," or "A=1,,B=2": Dkron passes an empty entry, which is a no-op
        elif entries:
            entries[-1][1] += "," + piece
        else:
            raise ConfigError(f"env: {piece.strip()!r} is not of the form NAME=value", key="env")
    for name, val in entries:
        _check_env_pair(name, val)
    return tuple((name, val) for name, val in entries)


def parse_success_codes(value: str) -> frozenset[int]:
    codes: set[int] = set()
    for piece in value.split(","):
        text = piece.strip()
        if not text.isdigit() or int(text) > 255:
            raise ConfigError(
                f"success_codes must be a comma-separated list of exit codes 0-255, got {value!r}",
                key="success_codes",
            )
        codes.add(int(text))
    return frozenset(codes)


def _parse_payload(value: str) -> bytes:
    # Go's StdEncoding skips CR/LF, so wrapped base64 (e.g. from `base64` CLI) is accepted.
    compact = value.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("payload must be valid base64", key="payload") from None


#: Dkron keys refused with a reason: Dkron's su needs the agent to run as root; not offered here.
_UNSUPPORTED = {"su": "su is not supported by this shell executor"}


def _build(config: Mapping[str, str]) -> ShellConfig:
    pluginkit.check_keys(config, KNOWN_KEYS, unsupported=_UNSUPPORTED, suggest=False, strings=True)
    command = config.get("command", "")
    if not command.strip():
        raise ConfigError("command is required", key="command")
    if "\0" in command:
        raise ConfigError("command contains a NUL byte", key="command")
    if pluginkit.parse_bool(config.get("shell", "false"), "shell"):
        argv: tuple[str, ...] = ("/bin/sh", "-c", command)
    else:
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:  # unbalanced quotes, trailing backslash
            raise ConfigError(f"command cannot be split into arguments: {exc}", key="command") from None
        if not argv:
            raise ConfigError("command is required", key="command")
    cwd = config.get("cwd", "").strip() or None
    if cwd is not None and (not cwd.startswith("/") or "\0" in cwd):
        raise ConfigError(f"cwd must be an absolute path, got {cwd!r}", key="cwd")
    timeout_text = config.get("timeout", "").strip()
    mem_text = config.get("mem_limit", "").strip()
    payload = config.get("payload", "")
    codes = config.get("success_codes", "").strip()
    return ShellConfig(
        argv=argv,
        command=command,
        # secret_env: same forms as env, applied after it; its values are redacted by the API.
        env=parse_env(config.get("env", "")) + parse_env(config.get("secret_env", "")),
        cwd=cwd,
        timeout=parse_duration(timeout_text) if timeout_text else None,
        timeout_text=timeout_text,
        mem_limit=parse_mem_limit(mem_text) if mem_text else None,
        payload=_parse_payload(payload) if payload.strip() else None,
        success_codes=parse_success_codes(codes) if codes else frozenset({0}),
    )


#: Configs with a larger (base64) payload are not cached, so the cache stays a few MB at most.
_MAX_CACHED_PAYLOAD = 4096

#: Parse a config for execution (cached: every run parses it again); raises :class:`ConfigError`
#: like :func:`validate_config`. Big payloads are decoded per run, to keep the cache small.
parse_config = pluginkit.cached(
    _build, maxsize=2048, max_chars=_MAX_CACHED_PAYLOAD, size=lambda config: len(config.get("payload", ""))
)


def validate_config(config: Mapping[str, str]) -> dict[str, str]:
    """Check a job's config at submission and return it normalised.

    Normalisation is deliberately light (values trimmed, ``shell`` spelled ``true``/``false``)
    so the job the user reads back is the job they wrote.
    """
    _build(config)
    normalised: dict[str, str] = {}
    for key, value in config.items():
        if key in ("command", "env", "secret_env", "payload"):
            normalised[key] = value  # leading/trailing spaces may be meaningful here
        elif key == "shell":
            normalised[key] = "true" if pluginkit.parse_bool(value, "shell") else "false"
        else:
            normalised[key] = value.strip()
    return normalised
