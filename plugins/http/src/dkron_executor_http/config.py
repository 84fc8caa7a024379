"""Parsing and validation of the http executor's ``executor_config``.

Every value arrives as a string (Dkron's contract). ``validate_config`` runs at job submission
(no I/O there: TLS files are only read when the job runs) and ``parse_config`` turns a validated
config into an immutable :class:`HttpConfig`; it is cached because every run parses the same
config again.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from dkron import pluginkit
from dkron.contracts import ConfigError, ConfigField

__all__ = [
    "CONFIG_SCHEMA",
    "DEFAULT_TIMEOUT",
    "KNOWN_KEYS",
    "HttpConfig",
    "parse_config",
    "parse_expect_code",
    "parse_headers",
    "parse_timeout",
    "validate_config",
]

KNOWN_KEYS = (
    "method",
    "url",
    "headers",
    "body",
    "timeout",
    "expectCode",
    "expectBody",
    "debug",
    "tlsNoVerifyPeer",
    "tlsCertificateFile",
    "tlsCertificateKeyFile",
    "tlsRootCAsFile",
)
DEFAULT_TIMEOUT = 30.0

#: The config's fields as forms show them (validation stays in ``validate_config``).
CONFIG_SCHEMA = (
    ConfigField(
        "method",
        "Method",
        kind="select",
        required=True,
        default="GET",
        choices=("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"),
    ),
    ConfigField("url", "URL", required=True, placeholder="https://example.com/hook"),
    ConfigField("headers", "Headers", kind="textarea", help='JSON: ["Name: value", ...] or {"Name": "value"}'),
    ConfigField("body", "Body", kind="textarea"),
    ConfigField("timeout", "Timeout (seconds)", kind="number", placeholder="30"),
    ConfigField("expectCode", "Expected status codes", help="e.g. 200 or 200,201,204", placeholder="200"),
    ConfigField("expectBody", "Expected body (regular expression)"),
    ConfigField("debug", "Debug output", kind="bool", default="false"),
    ConfigField("tlsNoVerifyPeer", "Skip TLS verification", kind="bool", default="false"),
    ConfigField("tlsCertificateFile", "Client certificate file"),
    ConfigField("tlsCertificateKeyFile", "Client key file"),
    ConfigField("tlsRootCAsFile", "Root CAs file"),
)

#: RFC 9110 token: what a method or a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters except TAB
#: Headers the executor computes itself; setting them by hand would corrupt the request.
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding"})

#: A timeout in plain seconds: ``10`` or ``2.5`` (not ``1.`` or ``.5``); shown with an ``s`` added.
_SECONDS = re.compile(r"\d+(\.\d+)?\Z")
# URL characters left as they are; anything else in the path or query is percent-encoded.
_URL_SAFE = "/:?#[]@!$&'()*+,;=%~"


@dataclass(frozen=True)
class HttpConfig:
    """A parsed, ready-to-run config (immutable, so the parse cache can share it across threads)."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout: float
    timeout_text: str
    expect_codes: frozenset[int] | None
    expect_body: re.Pattern[str] | None
    debug: bool
    tls_no_verify: bool
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_ca_file: str | None


def parse_method(value: str) -> str:
    method = value.strip().upper()
    if not method:
        raise ConfigError("method is required (GET, POST, ...)", key="method")
    if not _TOKEN.match(method):
        raise ConfigError(f"method {value!r} is not a valid HTTP method", key="method")
    return method


def parse_url(value: str) -> str:
    """Check an http(s) URL; returns it stripped, with non-ASCII path characters percent-encoded."""
    text = value.strip()
    if not text:
        raise ConfigError("url is required", key="url")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ConfigError("url must not contain spaces or control characters (percent-encode them)", key="url")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(f"url must start with http:// or https://, got {value!r}", key="url")
    try:
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"url has an invalid host or port: {exc}", key="url") from None
    if not host:
        raise ConfigError(f"url has no host: {value!r}", key="url")
    if port == 0:
        raise ConfigError("url port must be between 1 and 65535", key="url")
    try:
        host.encode("idna")
    except UnicodeError:
        raise ConfigError(f"url host {host!r} is not a valid host name", key="url") from None
    path = urllib.parse.quote(parts.path, safe=_URL_SAFE)
    query = urllib.parse.quote(parts.query, safe=_URL_SAFE)
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc, path, query, ""))


def _check_header(name: str, value: str) -> tuple[str, str]:
    name, value = name.strip(), value.strip()
    if not _TOKEN.match(name):
        raise ConfigError(f"headers: {name!r} is not a valid header name", key="headers")
    if _BAD_VALUE_CHARS.search(value):
        raise ConfigError(f"headers: the value of {name} contains a line break or control character", key="headers")
    if name.lower() in _RESERVED_HEADERS:
        raise ConfigError(f"headers: {name} is computed from body and must not be set", key="headers")
    return name, value


def parse_headers(value: str) -> tuple[tuple[str, str], ...]:
    """``["Name: value", ...]`` (Dkron's form, split on the first colon) or ``{"Name": "value"}``."""
    text = value.strip()
    if not text:
        return ()
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f'headers is not valid JSON ({exc}); use ["Name: value", ...]', key="headers") from None
    pairs: list[tuple[str, str]] = []
    if isinstance(obj, list):
        for item in obj:
            if not isinstance(item, str):
                raise ConfigError(f'headers: {item!r} is not a "Name: value" string', key="headers")
            if ":" not in item:
                raise ConfigError(f'headers: {item!r} has no colon (expected "Name: value")', key="headers")
            name, val = item.split(":", 1)
            pairs.append(_check_header(name, val))
    elif isinstance(obj, dict):
        for name, raw in obj.items():
            if isinstance(raw, bool):  # before int: bool is an int subclass
                raw = "true" if raw else "false"
            elif isinstance(raw, int | float):
                raw = str(raw)
            elif not isinstance(raw, str):
                raise ConfigError(f"headers: the value of {name} must be a string", key="headers")
            pairs.append(_check_header(name, raw))
    else:
        raise ConfigError('headers must be a JSON array of "Name: value" strings or a JSON object', key="headers")
    return tuple(pairs)


def parse_timeout(value: str) -> float:
    """Whole request time limit: seconds (``10``, ``2.5``) or a Go duration (``10s``, ``1m30s``)."""
    return pluginkit.parse_duration(
        value, "timeout", seconds=_SECONDS, expected="seconds or a duration such as 10s or 1m30s"
    )


def parse_expect_code(value: str) -> frozenset[int] | None:
    """Comma list of exact status codes; ``None`` (empty) means any 2xx."""
    if not value.strip():
        return None
    codes: set[int] = set()
    for piece in value.split(","):
        code = piece.strip()
        if not code:
            continue
        if not code.isdigit() or not 100 <= int(code) <= 599:
            raise ConfigError(f"expectCode: {code!r} is not an HTTP status code (100-599)", key="expectCode")
        codes.add(int(code))
    if not codes:
        raise ConfigError(f"expectCode has no status codes: {value!r}", key="expectCode")
    return frozenset(codes)


def _parse_expect_body(value: str) -> re.Pattern[str] | None:
    if value == "":
        return None
    try:
        return re.compile(value)
    except re.error as exc:
        raise ConfigError(f"expectBody is not a valid regular expression: {exc}", key="expectBody") from None


def _parse_path(config: Mapping[str, str], key: str) -> str | None:
    value = config.get(key, "").strip()
    if not value:
        return None
    if "\0" in value or not os.path.isabs(value):
        raise ConfigError(f"{key} must be an absolute file path, got {value!r}", key=key)
    return value


def _parse(config: Mapping[str, str]) -> HttpConfig:
    pluginkit.check_keys(config, KNOWN_KEYS)
    cert, key_file = _parse_path(config, "tlsCertificateFile"), _parse_path(config, "tlsCertificateKeyFile")
    if (cert is None) != (key_file is None):
        missing = "tlsCertificateKeyFile" if key_file is None else "tlsCertificateFile"
        raise ConfigError("a client certificate needs both tlsCertificateFile and tlsCertificateKeyFile", missing)
    timeout_text = config.get("timeout", "").strip()
    body = config.get("body")
    return HttpConfig(
        method=parse_method(config.get("method", "")),
        url=parse_url(config.get("url", "")),
        headers=parse_headers(config.get("headers", "")),
        body=body.encode("utf-8") if body else None,
        timeout=parse_timeout(timeout_text) if timeout_text else DEFAULT_TIMEOUT,
        timeout_text=(timeout_text + "s" if _SECONDS.match(timeout_text) else timeout_text) or "30s",
        expect_codes=parse_expect_code(config.get("expectCode", "")),
        expect_body=_parse_expect_body(config.get("expectBody", "")),
        debug=pluginkit.parse_bool(config.get("debug", ""), "debug", default=False),
        tls_no_verify=pluginkit.parse_bool(config.get("tlsNoVerifyPeer", ""), "tlsNoVerifyPeer", default=False),
        tls_cert_file=cert,
        tls_key_file=key_file,
        tls_ca_file=_parse_path(config, "tlsRootCAsFile"),
    )


_parse_cached = pluginkit.cached(_parse, maxsize=256, max_chars=None)


def parse_config(config: Mapping[str, str]) -> HttpConfig:
    """Parse a (validated) config; raises :class:`ConfigError` naming the key at fault."""
    return _parse_cached({str(key): str(value) for key, value in config.items()})


def validate_config(config: Mapping[str, str]) -> dict[str, str]:
    """Check a job's config at submission; return it normalised (method upper-cased, booleans spelled out)."""
    cfg = parse_config(config)
    normalised = {key: str(value) for key, value in config.items()}
    normalised["method"] = cfg.method
    normalised["url"] = cfg.url
    for key, value in (("debug", cfg.debug), ("tlsNoVerifyPeer", cfg.tls_no_verify)):
        if key in config:
            normalised[key] = "true" if value else "false"
    return normalised
