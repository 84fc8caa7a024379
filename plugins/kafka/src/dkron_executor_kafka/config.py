"""Parsing and validation of the kafka executor's ``executor_config``.

Every value arrives as a string. ``validate_config`` runs at job submission (no I/O there) and
``parse_config`` turns a validated config into a :class:`KafkaConfig` for ``execute``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from dkron import pluginkit
from dkron.contracts import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT",
    "KNOWN_KEYS",
    "SASL_MECHANISMS",
    "KafkaConfig",
    "parse_brokers",
    "parse_config",
    "parse_timeout",
    "validate_config",
]

KNOWN_KEYS = frozenset(
    {
        "brokerAddress",
        "topic",
        "key",
        "message",
        "tlsEnable",
        "tlsInsecureSkipVerify",
        "tlsRootCAsFile",
        "saslUsername",
        "saslPassword",
        "saslMechanism",
        "timeout",
        "debug",
    }
)
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 86400.0

#: Accepted spellings of ``saslMechanism`` (any case) -> librdkafka's ``sasl.mechanism``.
SASL_MECHANISMS = {
    "plain": "PLAIN",
    "sha256": "SCRAM-SHA-256",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram_sha_256": "SCRAM-SHA-256",
    "sha512": "SCRAM-SHA-512",
    "scram-sha-512": "SCRAM-SHA-512",
    "scram_sha_512": "SCRAM-SHA-512",
}

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
_BROKER = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})\Z")


@dataclass(frozen=True)
class KafkaConfig:
    brokers: tuple[str, ...]
    topic: str
    key: bytes | None
    message: bytes
    tls: bool
    tls_insecure: bool
    ca_file: str | None
    sasl_mechanism: str | None  # librdkafka spelling: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str
    sasl_password: str
    timeout: float
    debug: bool


def _flag(config: Mapping[str, str], key: str) -> bool:
    return pluginkit.parse_bool(config.get(key, ""), key, default=False)


def parse_timeout(value: str, key: str = "timeout") -> float:
    """Seconds (``30``, ``2.5``) or a Go duration (``30s``, ``1m``, ``500ms``); must be > 0 and at most 24h."""
    return pluginkit.parse_duration(value, key, maximum=MAX_TIMEOUT)


def parse_brokers(value: str) -> tuple[str, ...]:
    """``brokerAddress``: comma-separated ``host:port`` (IPv6 as ``[::1]:9092``)."""
    brokers: list[str] = []
    for piece in value.split(","):
        text = piece.strip()
        if not text:
            continue
        match = _BROKER.match(text)
        if match is None:
            raise ConfigError(f"brokerAddress: {text!r} is not host:port", key="brokerAddress")
        if not 1 <= int(match.group("port")) <= 65535:
            raise ConfigError(f"brokerAddress: port of {text!r} must be 1-65535", key="brokerAddress")
        brokers.append(text)
    if not brokers:
        raise ConfigError("brokerAddress is required", key="brokerAddress")
    return tuple(brokers)


def _check_topic(topic: str) -> str:
    if not topic:
        raise ConfigError("topic is required", key="topic")
    if topic in (".", "..") or not _TOPIC.match(topic):
        raise ConfigError(
            f"topic must be 1-249 characters of A-Z a-z 0-9 . _ - (and not . or ..), got {topic!r}", key="topic"
        )
    return topic


def _sasl(config: Mapping[str, str]) -> tuple[str | None, str, str]:
    username = config.get("saslUsername", "")
    password = config.get("saslPassword", "")
    mechanism_text = config.get("saslMechanism", "").strip()
    if not username and not password and not mechanism_text:
        return None, "", ""
    if not username:
        raise ConfigError("saslUsername is required when saslPassword or saslMechanism is set", key="saslUsername")
    if not password:
        raise ConfigError("saslPassword is required when saslUsername is set", key="saslPassword")
    if not mechanism_text:
        raise ConfigError("saslMechanism is required with SASL: plain, sha256 or sha512", key="saslMechanism")
    mechanism = SASL_MECHANISMS.get(mechanism_text.lower())
    if mechanism is None:
        raise ConfigError(
            f"saslMechanism must be plain, sha256 (SCRAM-SHA-256) or sha512 (SCRAM-SHA-512), got {mechanism_text!r}",
            key="saslMechanism",
        )
    return mechanism, username, password


def _build(config: Mapping[str, str]) -> KafkaConfig:
    pluginkit.check_keys(config, KNOWN_KEYS, suggest=False, strings=True)
    brokers = parse_brokers(config.get("brokerAddress", ""))
    topic = _check_topic(config.get("topic", "").strip())
    tls = _flag(config, "tlsEnable")
    insecure = _flag(config, "tlsInsecureSkipVerify")
    ca_file = config.get("tlsRootCAsFile", "").strip() or None
    if ca_file is not None and (not ca_file.startswith("/") or "\0" in ca_file):
        raise ConfigError(f"tlsRootCAsFile must be an absolute path, got {ca_file!r}", key="tlsRootCAsFile")
    if not tls and insecure:
        raise ConfigError("tlsInsecureSkipVerify needs tlsEnable true", key="tlsInsecureSkipVerify")
    if not tls and ca_file is not None:
        raise ConfigError("tlsRootCAsFile needs tlsEnable true", key="tlsRootCAsFile")
    mechanism, username, password = _sasl(config)
    key = config.get("key", "")
    timeout_text = config.get("timeout", "").strip()
    return KafkaConfig(
        brokers=brokers,
        topic=topic,
        key=key.encode("utf-8", "surrogatepass") if key else None,
        message=config.get("message", "").encode("utf-8", "surrogatepass"),
        tls=tls,
        tls_insecure=insecure,
        ca_file=ca_file,
        sasl_mechanism=mechanism,
        sasl_username=username,
        sasl_password=password,
        timeout=parse_timeout(timeout_text) if timeout_text else DEFAULT_TIMEOUT,
        debug=_flag(config, "debug"),
    )


#: Parse a config for execution (cached, big messages excepted); raises :class:`ConfigError`
#: like :func:`validate_config`.
parse_config = pluginkit.cached(_build)


def validate_config(config: Mapping[str, str]) -> dict[str, str]:
    """Check a job's config at submission and return it normalised (values trimmed, bools spelled out)."""
    _build(config)
    normalised: dict[str, str] = {}
    for key, value in config.items():
        if key in ("key", "message", "saslUsername", "saslPassword"):
            normalised[key] = value  # spaces may be meaningful
        elif key in ("tlsEnable", "tlsInsecureSkipVerify", "debug"):
            normalised[key] = "true" if _flag(config, key) else "false"
        else:
            normalised[key] = value.strip()
    return normalised
