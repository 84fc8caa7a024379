"""Parsing and validation of the nats executor's ``executor_config``.

Every value arrives as a string. ``validate_config`` runs at job submission (no I/O there) and
``parse_config`` turns a validated config into a :class:`NatsConfig` for ``execute``.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from dkron import pluginkit
from dkron.contracts import ConfigError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "KNOWN_KEYS",
    "NatsConfig",
    "Server",
    "check_subject",
    "parse_config",
    "parse_servers",
    "parse_timeout",
    "validate_config",
]

KNOWN_KEYS = frozenset(
    {"url", "subject", "message", "userName", "password", "token", "timeout", "debug", "tlsRootCAsFile"}
)
DEFAULT_PORT = 4222
DEFAULT_TIMEOUT = 10.0

# Whitespace and control characters end a token in the NATS protocol; they never belong in a subject.
_BAD_SUBJECT_CHAR = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class Server:
    """One server from ``url``: where to connect, and credentials embedded in the URL."""

    scheme: str  # "nats" or "tls"
    host: str
    port: int
    user: str = ""
    password: str = ""
    token: str = ""

    @property
    def address(self) -> str:
        """``scheme://host:port`` without credentials, for output and errors."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class NatsConfig:
    servers: tuple[Server, ...]
    subject: str
    payload: bytes
    user: str
    password: str
    token: str
    timeout: float
    debug: bool
    ca_file: str | None


def _debug(value: str) -> bool:
    # Empty means false, but a value of only spaces is refused (unlike the other bool keys of plugins).
    return pluginkit.parse_bool(value or "false", "debug")


def parse_timeout(value: str, key: str = "timeout") -> float:
    """Seconds (``10``, ``2.5``) or a Go duration (``30s``, ``1m30s``, ``500ms``); must be > 0."""
    return pluginkit.parse_duration(value, key, expected="seconds or a duration such as 10s or 500ms")


def check_subject(subject: str) -> str:
    """A subject to publish to: dot-separated non-empty tokens, no whitespace, no wildcards."""
    if not subject:
        raise ConfigError("subject is required", key="subject")
    if _BAD_SUBJECT_CHAR.search(subject):
        raise ConfigError(f"subject must not contain spaces or control characters, got {subject!r}", key="subject")
    tokens = subject.split(".")
    if any(not token for token in tokens):
        raise ConfigError(f"subject has an empty token (leading, trailing or double dot): {subject!r}", key="subject")
    if any(token in ("*", ">") for token in tokens):
        raise ConfigError(f"subject must not contain the wildcards * or > when publishing: {subject!r}", key="subject")
    return subject


def _parse_server(piece: str) -> Server:
    text = piece.strip()
    if "://" not in text:
        text = "nats://" + text  # nats.go accepts bare host:port too
    try:
        parsed = urllib.parse.urlsplit(text)
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"url: {piece.strip()!r} is not a valid URL: {exc}", key="url") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("nats", "tls"):
        raise ConfigError(f"url: scheme of {piece.strip()!r} must be nats:// or tls://", key="url")
    if not parsed.hostname:
        raise ConfigError(f"url: {piece.strip()!r} has no host", key="url")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
        raise ConfigError(f"url: {piece.strip()!r} must be scheme://[credentials@]host[:port]", key="url")
    if port == 0:
        raise ConfigError(f"url: port of {piece.strip()!r} must be 1-65535", key="url")
    user = urllib.parse.unquote(parsed.username or "")
    password = urllib.parse.unquote(parsed.password or "")
    if parsed.password is None:  # nats://TOKEN@host: a lone user part is a token, as in nats.go
        return Server(scheme, parsed.hostname, port or DEFAULT_PORT, token=user)
    return Server(scheme, parsed.hostname, port or DEFAULT_PORT, user=user, password=password)


def parse_servers(value: str) -> tuple[Server, ...]:
    """``url``: one or more comma-separated ``nats://`` / ``tls://`` URLs (default port 4222)."""
    pieces = [piece for piece in value.split(",") if piece.strip()]
    if not pieces:
        raise ConfigError("url is required", key="url")
    return tuple(_parse_server(piece) for piece in pieces)


def _build(config: Mapping[str, str]) -> NatsConfig:
    pluginkit.check_keys(config, KNOWN_KEYS, suggest=False, strings=True)
    servers = parse_servers(config.get("url", ""))
    subject = check_subject(config.get("subject", "").strip())
    user = config.get("userName", "")
    password = config.get("password", "")
    token = config.get("token", "")
    if password and not user:
        raise ConfigError("userName is required when password is set", key="userName")
    if user and token:
        raise ConfigError("token cannot be combined with userName/password", key="token")
    for key, value in (("userName", user), ("password", password), ("token", token)):
        if any(ch in value for ch in "\r\n\0"):
            raise ConfigError(f"{key} must not contain line breaks or NUL bytes", key=key)
    timeout_text = config.get("timeout", "").strip()
    ca_file = config.get("tlsRootCAsFile", "").strip() or None
    if ca_file is not None and (not ca_file.startswith("/") or "\0" in ca_file):
        raise ConfigError(f"tlsRootCAsFile must be an absolute path, got {ca_file!r}", key="tlsRootCAsFile")
    return NatsConfig(
        servers=servers,
        subject=subject,
        payload=config.get("message", "").encode("utf-8", "surrogatepass"),
        user=user,
        password=password,
        token=token,
        timeout=parse_timeout(timeout_text) if timeout_text else DEFAULT_TIMEOUT,
        debug=_debug(config.get("debug", "")),
        ca_file=ca_file,
    )


#: Parse a config for execution (cached, big messages excepted); raises :class:`ConfigError`
#: like :func:`validate_config`.
parse_config = pluginkit.cached(_build)


def validate_config(config: Mapping[str, str]) -> dict[str, str]:
    """Check a job's config at submission and return it normalised (values trimmed, bools spelled out)."""
    _build(config)
    normalised: dict[str, str] = {}
    for key, value in config.items():
        if key in ("message", "userName", "password", "token"):
            normalised[key] = value  # spaces may be meaningful
        elif key == "debug":
            normalised[key] = "true" if _debug(value) else "false"
        else:
            normalised[key] = value.strip()
    return normalised
