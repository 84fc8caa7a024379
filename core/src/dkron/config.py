"""Agent configuration: Dkron's option names, from flags, ``DKRON_*`` env vars and ``dkron.yml``.

Precedence is flag > environment > config file > default, as in Dkron. Every option has one
definition here; the CLI builds its flags from this table, so they cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad configuration: the CLI prints the message and exits non-zero."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str, option: str = "duration") -> float:
    """Go-style durations (``1h30m``, ``45s``, ``500ms``) or plain seconds; returns seconds."""
    value = str(text).strip()
    if not value:
        raise ConfigError(f"{option}: empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ConfigError(f"{option}: invalid duration {text!r} (must be a finite number of seconds >= 0)")
        return seconds
    pos, total = 0, 0.0
    for match in _DURATION.finditer(value):
        if match.start() != pos:
            break
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ConfigError(f"{option}: invalid duration {text!r} (examples: 30s, 5m, 1h30m)")
    return total


@dataclass(frozen=True)
class Option:
    name: str
    kind: str  # bool | int | str | list | duration | tags
    default: Any
    help: str


OPTIONS: tuple[Option, ...] = (
    Option("server", "bool", False, "run as a server (Raft member, scheduler, HTTP API and UI)"),
    Option("bootstrap-expect", "int", 0, "number of servers to wait for before bootstrapping the cluster"),
    Option("node-name", "str", "", "unique name of this node (default: the host name)"),
    Option("data-dir", "str", "dkron.data", "directory for the Raft journal and the state database"),
    Option("http-addr", "str", "127.0.0.1:8080", "address of the HTTP API and UI"),
    Option("bind-addr", "str", "127.0.0.1", "address to bind gRPC and Raft to"),
    Option("advertise-addr", "str", "", "address other nodes use to reach this one (default: bind-addr)"),
    Option("rpc-port", "int", 6868, "gRPC port"),
    Option("raft-port", "int", 6869, "Raft port (servers)"),
    Option("join", "list", [], "address of a server to join at start (repeatable)"),
    Option("retry-join", "list", [], "address of a server to join, retried until it answers (repeatable)"),
    Option("tag", "tags", {}, "node tag key=value used to target jobs (repeatable)"),
    Option("encrypt", "str", "", "cluster key from 'dkron keygen': encrypts and authenticates server traffic"),
    Option("insecure-bind", "bool", False, "allow binding Raft/gRPC beyond loopback without --encrypt"),
    # Security (docs/security.md).
    Option("acl-enabled", "bool", False, "require API tokens (create the first with 'dkron acl bootstrap')"),
    Option("audit-retention-count", "int", 100_000, "audit log entries kept (oldest dropped first)"),
    Option("audit-retention-age", "str", "", "drop audit entries older than this (e.g. 2160h); empty = keep"),
    Option("http-tls-cert", "str", "", "PEM certificate (chain) to serve the HTTP API over HTTPS"),
    Option("http-tls-key", "str", "", "PEM private key of --http-tls-cert"),
    Option("grpc-tls-ca", "str", "", "PEM CA bundle: gRPC peers must present a certificate it signed (mTLS)"),
    Option("grpc-tls-cert", "str", "", "PEM certificate this node presents on gRPC (signed by --grpc-tls-ca)"),
    Option("grpc-tls-key", "str", "", "PEM private key of --grpc-tls-cert"),
    Option("grpc-tls-server-name", "str", "", "name to verify in servers' certificates (default: the host)"),
    Option("cors-allowed-origins", "list", [], "origins allowed to call the API from a browser (default: none)"),
    Option("max-header-bytes", "int", 65_536, "largest request line plus headers the HTTP API accepts"),
    Option("log-level", "str", "info", "debug, info, warn or error"),
    Option("log-json", "bool", False, "write logs as JSON lines"),
    Option("log-format", "str", "text", "text or json (json = log-json: one JSON object per line)"),
    Option("ui", "bool", True, "serve the web UI"),
    Option("max-output-bytes", "int", 256_000, "output kept per execution (the tail)"),
    Option("retention-count", "int", 100, "executions kept per job"),
    Option("retention-age", "str", "", "drop executions older than this (e.g. 720h); empty = keep"),
    Option(
        "catchup-window",
        "duration",
        60.0,
        "a tick missed by less than this runs once when scheduling resumes",
    ),
    Option(
        "retry-backoff-base",
        "duration",
        1.0,
        "delay before a job's first retry; doubles per attempt (with jitter), up to retry-backoff-max",
    ),
    Option("retry-backoff-max", "duration", 300.0, "longest delay between two attempts of a run"),
    Option("shutdown-timeout", "duration", 30.0, "on SIGTERM, let running executions finish this long"),
    Option("max-concurrent-runs", "int", 256, "executions running at once on this node"),
    # SMTP for the email processor (Dkron's mail-* options, plus mail-tls/mail-timeout/mail-ca-file).
    Option("mail-host", "str", "", "SMTP server host for e-mail reports (empty = no e-mail)"),
    Option("mail-port", "int", 0, "SMTP server port (0 = 587 for starttls, 465 for tls, 25 for none)"),
    Option("mail-username", "str", "", "SMTP user name (AUTH only when set)"),
    Option("mail-password", "str", "", "SMTP password (prefer the env var: flags show in ps)"),
    Option("mail-from", "str", "", "From address of e-mail reports"),
    Option("mail-subject-prefix", "str", "[Dkron]", "prefix of e-mail report subjects"),
    Option("mail-tls", "str", "starttls", "SMTP transport security: starttls, tls (SMTPS) or none"),
    Option("mail-timeout", "duration", 10.0, "SMTP connect and I/O timeout"),
    Option("mail-ca-file", "str", "", "PEM CA bundle to verify the SMTP server with (default: system CAs)"),
    # Notifications (Dkron's keys): e-mail to a job's owner_email, webhooks before and after each run.
    Option("mail-payload", "str", "", "Jinja2 template of notification e-mail bodies (empty = Dkron's report)"),
    Option("pre-webhook-endpoint", "str", "", "URL POSTed when a run starts (empty = none)"),
    Option("pre-webhook-payload", "str", "", "Jinja2 template of the pre-run webhook body (empty = JSON)"),
    Option("pre-webhook-headers", "list", [], "'Name: value' header of the pre-run webhook (repeatable)"),
    Option("webhook-endpoint", "str", "", "URL POSTed when a run ends (empty = none)"),
    Option("webhook-payload", "str", "", "Jinja2 template of the post-run webhook body (empty = JSON)"),
    Option("webhook-headers", "list", [], "'Name: value' header of the post-run webhook (repeatable)"),
    Option("notification-timeout", "duration", 10.0, "timeout of each notification attempt (SMTP, webhook)"),
    Option("notification-retries", "int", 3, "extra attempts of a failed notification (exponential backoff)"),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")
MAIL_TLS_MODES = ("starttls", "tls", "none")


def env_name(option: str) -> str:
    return "DKRON_" + option.upper().replace("-", "_")


def _coerce(option: Option, value: Any, source: str) -> Any:
    where = f"{option.name} (from {source})"
    try:
        if option.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        if option.kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if option.kind == "duration":
            if isinstance(value, bool):
                raise ValueError
            return parse_duration(str(value) if isinstance(value, int | float) else value, where)
        if option.kind == "list":
            if isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            return [str(item) for item in value]
        if option.kind == "tags":
            return _tags(value, where)
        if isinstance(value, list | dict):
            raise ValueError
        return str(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: expected {option.kind}, got {value!r}") from None


def _tags(value: Any, where: str) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    items = value.split(",") if isinstance(value, str) else list(value)
    tags = {}
    for item in items:
        key, sep, val = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: invalid tag {item!r}, expected key=value")
        tags[key.strip()] = val.strip()
    return tags


def load_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())  # PyYAML's messages span lines; the CLI prints one
        raise ConfigError(f"config file {path} is not valid YAML: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of option names to values")
    if "tags" in data and "tag" not in data:
        data["tag"] = data.pop("tags")
    unknown = sorted(str(key) for key in data if key not in OPTIONS_BY_NAME)
    if unknown:
        raise ConfigError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    return data


def resolve(flags: Mapping[str, Any], env: Mapping[str, str] | None = None, file: str | None = None) -> dict[str, Any]:
    """Merge the sources; ``flags`` holds only options given on the command line."""
    env = os.environ if env is None else env
    path = file or env.get("DKRON_CONFIG")
    if path is None:
        for candidate in ("dkron.yml", "dkron.yaml", "/etc/dkron/dkron.yml"):
            if os.path.exists(candidate):
                path = candidate
                break
    from_file = load_file(path) if path else {}
    config: dict[str, Any] = {}
    for option in OPTIONS:
        if option.name in flags:
            config[option.name] = _coerce(option, flags[option.name], "flag")
        elif env_name(option.name) in env:
            config[option.name] = _coerce(option, env[env_name(option.name)], env_name(option.name))
        elif from_file.get(option.name) is not None:  # "key:" with no value in YAML is unset
            config[option.name] = _coerce(option, from_file[option.name], path or "file")
        else:
            config[option.name] = option.default
    return validate(config)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_addr(addr: str, option: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option}: expected host:port, got {addr!r}")
    return host.strip("[]"), int(port)


def validate(config: dict[str, Any]) -> dict[str, Any]:
    if not config["node-name"]:
        config["node-name"] = socket.gethostname()
    if config["log-level"].lower() not in LOG_LEVELS:
        raise ConfigError(f"log-level: must be one of debug, info, warn, error (got {config['log-level']!r})")
    for name in ("rpc-port", "raft-port"):
        if not 0 < config[name] < 65536:
            raise ConfigError(f"{name}: must be a port number 1-65535")
    if config["bootstrap-expect"] < 0:
        raise ConfigError("bootstrap-expect: must be >= 0")
    if config["max-output-bytes"] > 8 * 1024 * 1024:
        # An execution record travels in one Raft entry; pysyncobj must never chunk one.
        raise ConfigError("max-output-bytes: at most 8388608 (8 MiB) of output is kept per execution")
    for name in ("max-output-bytes", "retention-count", "max-concurrent-runs"):
        if config[name] < 1:
            raise ConfigError(f"{name}: must be >= 1")
    if config["retention-age"]:
        config["retention-age-seconds"] = parse_duration(config["retention-age"], "retention-age")
    else:
        config["retention-age-seconds"] = 0.0
    if config["mail-port"] and not 0 < config["mail-port"] < 65536:
        raise ConfigError("mail-port: must be a port number 1-65535 (or 0 for the default)")
    config["mail-tls"] = config["mail-tls"].strip().lower()
    if config["mail-tls"] not in MAIL_TLS_MODES:
        raise ConfigError(f"mail-tls: must be one of starttls, tls, none (got {config['mail-tls']!r})")
    if config["mail-timeout"] <= 0:
        raise ConfigError("mail-timeout: must be > 0")
    config["log-format"] = config["log-format"].strip().lower()
    if config["log-format"] not in ("text", "json"):
        raise ConfigError(f"log-format: must be text or json (got {config['log-format']!r})")
    if config["log-format"] == "json":
        config["log-json"] = True
    if config["notification-retries"] < 0 or config["notification-timeout"] <= 0:
        raise ConfigError("notification-retries must be >= 0 and notification-timeout > 0")
    from dkron.notify.notifier import NotifyConfig  # checks endpoints, headers and templates

    try:
        NotifyConfig.from_config(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    split_addr(config["http-addr"], "http-addr")
    _validate_security(config)
    if config["encrypt"]:
        from dkron.cluster.security import ClusterKeyError, decode_key

        try:
            decode_key(config["encrypt"])
        except ClusterKeyError as exc:
            raise ConfigError(str(exc)) from None
    # Raft (servers) is protected only by --encrypt; an agent's gRPC may use --grpc-tls-* instead.
    grpc_authenticated = bool(config["encrypt"] or (config["grpc-tls-ca"] and not config["server"]))
    if not _is_loopback(config["bind-addr"]) and not grpc_authenticated and not config["insecure-bind"]:
        raise ConfigError(
            f"bind-addr {config['bind-addr']} is not a loopback address: cluster traffic would be "
            "unauthenticated (anyone reaching the Raft port could run code). Set --encrypt with a key "
            "from 'dkron keygen', or pass --insecure-bind to accept the risk."
        )
    return config


def _readable(config: dict[str, Any], name: str) -> None:
    path = config[name]
    if path and not os.access(path, os.R_OK):
        raise ConfigError(f"{name}: cannot read {path}")


def _validate_security(config: dict[str, Any]) -> None:
    if config["audit-retention-count"] < 0:
        raise ConfigError("audit-retention-count: must be >= 0 (0 = keep every entry)")
    age = config["audit-retention-age"]
    config["audit-retention-age-seconds"] = parse_duration(age, "audit-retention-age") if age else 0.0
    if bool(config["http-tls-cert"]) != bool(config["http-tls-key"]):
        raise ConfigError("http-tls-cert and http-tls-key go together: set both or neither")
    tls = ("grpc-tls-ca", "grpc-tls-cert", "grpc-tls-key")
    if any(config[name] for name in tls) and not all(config[name] for name in tls):
        raise ConfigError("grpc-tls-ca, grpc-tls-cert and grpc-tls-key go together: set all three or none")
    for name in ("http-tls-cert", "http-tls-key", *tls):
        _readable(config, name)
    if config["max-header-bytes"] < 4096:
        raise ConfigError("max-header-bytes: must be >= 4096")
