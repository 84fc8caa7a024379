"""Parsing and validation of the rabbitmq executor's ``executor_config``.

Every value arrives as a string (Dkron's contract). ``validate_config`` runs at job submission
(no I/O) and returns the normalised config that is stored with the job; ``parse_config`` turns
it into an immutable :class:`RabbitConfig` for ``execute``.
"""

from __future__ import annotations

import ast
import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika

from dkron import pluginkit
from dkron.contracts import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT",
    "KNOWN_KEYS",
    "RabbitConfig",
    "parse_config",
    "parse_duration",
    "redact_url",
    "validate_config",
]

DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 3600.0

KNOWN_KEYS = frozenset(
    {
        "url",
        "exchange",
        "queue.name",
        "queue.create",
        "queue.durable",
        "queue.auto_delete",
        "queue.exclusive",
        "message.content_type",
        "message.delivery_mode",
        "message.messageId",
        "message.body",
        "message.base64Body",
        "message.base64",  # the spelling Dkron's docs use; normalised to message.base64Body
        "timeout",
    }
)

_KNOWN_TEXT = f"known: {', '.join(sorted(KNOWN_KEYS))}"

# AMQP short strings (queue, exchange, message id) are at most 255 bytes.
_SHORTSTR = 255


@dataclass(frozen=True)
class RabbitConfig:
    """A parsed, ready-to-use config."""

    url: str = field(repr=False)  # may hold a password
    exchange: str
    queue: str
    create_queue: bool
    durable: bool
    auto_delete: bool
    exclusive: bool
    content_type: str
    delivery_mode: int | None
    message_id: str | None
    body: bytes
    timeout: float

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for output and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def parse_duration(raw: str, key: str = "timeout") -> float:
    """A Go duration (``30s``, ``1m30s``, ``500ms``) or a plain number of seconds; must be > 0 and at most 1h."""
    return pluginkit.parse_duration(raw, key, maximum=MAX_TIMEOUT, expected="a duration such as 30s, 1m or 500ms")


def _check_url(raw: str) -> str:
    url = raw.strip()
    if not url:
        raise ConfigError("url is required (amqp://user:password@host:5672/vhost)", key="url")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("amqp", "amqps"):
        raise ConfigError(f"url must start with amqp:// or amqps://, got {redact_url(url)!r}", key="url")
    # pika loads the files named in ssl_options (CA, client certificate) while parsing: they
    # live on the agents, not necessarily here, so that option is only checked for syntax.
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    try:
        for name, value in query:
            if name == "ssl_options" and not isinstance(ast.literal_eval(value), dict | None):
                raise ValueError("ssl_options must be a dict literal")
        without_files = urlencode([(name, value) for name, value in query if name != "ssl_options"])
        pika.URLParameters(urlunsplit(parts._replace(query=without_files)))  # host, port, vhost, options
    except Exception as exc:
        raise ConfigError(f"url is not a valid AMQP URL ({redact_url(url)}): {exc}", key="url") from None
    return url


def _check_short(config: Mapping[str, str], key: str, *, required: bool = False) -> str:
    value = config.get(key, "")
    if required and not value.strip():
        raise ConfigError(f"{key} is required", key=key)
    if len(value.encode()) > _SHORTSTR:
        raise ConfigError(f"{key} must be at most {_SHORTSTR} bytes", key=key)
    return value


def _body(config: Mapping[str, str]) -> tuple[str, str | None]:
    """(normalised key, value) of the message body; enforces body/base64Body exclusivity."""
    present = [k for k in ("message.body", "message.base64Body", "message.base64") if k in config]
    if "message.base64Body" in present and "message.base64" in present:
        raise ConfigError("set message.base64Body or its alias message.base64, not both", key="message.base64")
    if len(present) > 1:
        other = present[1]
        raise ConfigError(f"message.body and {other} are mutually exclusive: set only one", key=other)
    if not present:
        return "message.body", None
    key = present[0]
    value = config[key]
    if key == "message.body":
        return key, value
    try:
        base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{key} is not valid base64", key=key) from None
    return "message.base64Body", value.strip()


def _delivery_mode(config: Mapping[str, str]) -> str:
    raw = config.get("message.delivery_mode", "").strip()
    if raw not in ("", "0", "1", "2"):
        raise ConfigError(
            f"message.delivery_mode must be 1 (transient) or 2 (persistent), got {raw!r}",
            key="message.delivery_mode",
        )
    return raw


def validate_config(config: Mapping[str, str]) -> dict[str, str]:
    """Check a job's config at submission; return it normalised (strings only)."""
    pluginkit.check_keys(config, KNOWN_KEYS, suggest=False, known=_KNOWN_TEXT)
    out: dict[str, str] = {"url": _check_url(config.get("url", ""))}
    out["queue.name"] = _check_short(config, "queue.name", required=True)
    out["exchange"] = _check_short(config, "exchange")
    for key in ("queue.create", "queue.durable", "queue.auto_delete", "queue.exclusive"):
        if key in config:
            out[key] = "true" if pluginkit.parse_bool(config[key], key, default=False) else "false"
    out["message.content_type"] = config.get("message.content_type", "").strip() or "text/plain"
    _check_short(out, "message.content_type")
    mode = _delivery_mode(config)
    if mode:
        out["message.delivery_mode"] = mode
    if "message.messageId" in config:
        out["message.messageId"] = _check_short(config, "message.messageId")
    body_key, body = _body(config)
    if body is not None:
        out[body_key] = body
    if "timeout" in config:
        parse_duration(config["timeout"])
        out["timeout"] = config["timeout"].strip()
    return out


def parse_config(config: Mapping[str, str]) -> RabbitConfig:
    """A validated (or raw) config as a :class:`RabbitConfig`; raises :class:`ConfigError`."""
    cfg = validate_config(config)
    if "message.base64Body" in cfg:
        body = base64.b64decode(cfg["message.base64Body"], validate=True)
    else:
        body = cfg.get("message.body", "").encode()
    mode = cfg.get("message.delivery_mode", "")
    return RabbitConfig(
        url=cfg["url"],
        exchange=cfg["exchange"],
        queue=cfg["queue.name"],
        # Dkron declares the queue only when queue.create is present and not "false".
        create_queue=cfg.get("queue.create") == "true",
        durable=cfg.get("queue.durable") == "true",
        auto_delete=cfg.get("queue.auto_delete") == "true",
        exclusive=cfg.get("queue.exclusive") == "true",
        content_type=cfg["message.content_type"],
        delivery_mode=int(mode) if mode in ("1", "2") else None,
        message_id=cfg.get("message.messageId") or None,
        body=body,
        timeout=parse_duration(cfg["timeout"]) if "timeout" in cfg else DEFAULT_TIMEOUT,
    )
