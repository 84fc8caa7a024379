"""The ``email`` processor: e-mails an execution's report and output over SMTP.

Dkron (OSS) only e-mails notifications to a job's ``owner_email``; here it is a processor, chosen
and configured per job (``"processors": {"email": {"emails": "ops@example.com"}}``). The SMTP
server comes from the agent's ``mail-*`` options, read through ``registry.settings`` on the node
where the job ran (processors run there).

The subject is Dkron's: ``<mail-subject-prefix><Success|Failed> <job> execution report`` (no space
after the prefix). The body is a short report (job, execution, node, times, success) followed by the
output, trimmed to its last :data:`MAX_OUTPUT_BYTES`.

The processor never raises and never blocks longer than ``mail-timeout``: a missing ``mail-host``,
an unreachable or misbehaving server, a refused login or a bad certificate is logged as a warning
(never with the password) and the execution is returned unchanged, output included.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from dkron import pluginkit
from dkron.contracts import ConfigError

# The SMTP client is the core's (shared with owner_email notifications); re-exported here.
from dkron.notify.smtp import DEFAULT_PORTS, SmtpSettings, describe, send_message

__all__ = [
    "DEFAULT_PORTS",
    "KNOWN_KEYS",
    "LOGGER_NAME",
    "MAX_OUTPUT_BYTES",
    "MAX_RECIPIENTS",
    "EmailProcessor",
    "SmtpSettings",
    "build_message",
    "parse_emails",
    "placeholder",
    "render_subject",
    "send_message",
]

LOGGER_NAME = "dkron.processor.email"
log = logging.getLogger(LOGGER_NAME)

#: ``reporting_node`` is injected by Dkron into every processor's config, so it is accepted.
KNOWN_KEYS = frozenset({"emails", "forward", "on", "subject", "include_output", "reporting_node"})
_KNOWN_TEXT = f"the email processor knows {', '.join(sorted(KNOWN_KEYS - {'reporting_node'}))}"
ON_VALUES = ("always", "failure", "success")
#: Largest part of the output put in a message (its tail, like the core keeps).
MAX_OUTPUT_BYTES = 1024 * 1024
MAX_RECIPIENTS = 100
MAX_SUBJECT = 200
#: Placeholders a ``subject`` template may use.
SUBJECT_FIELDS = ("job", "status", "node", "execution_id", "attempt")

# A syntactic check, deliberately simple: local@domain, no spaces, quotes, brackets or separators
# in the local part, and a domain of dot-separated LDH labels (or an IP literal in brackets).
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SUBJECT_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- job config ----------------------------------------------------------------------------------


def _parse_bool(config: Mapping[str, str], key: str, default: bool) -> bool:
    raw = config.get(key)  # unlike pluginkit.parse_forward, a None value here means "not set"
    return pluginkit.parse_bool("" if raw is None else raw, key, default=default)


def _valid_address(address: str) -> bool:
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain or len(address) > 254 or len(local) > 64:
        return False
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1].removeprefix("IPv6:")
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return False
        return True
    return all(_LABEL.match(label) for label in domain.split("."))


def parse_emails(config: Mapping[str, str]) -> list[str]:
    """The ``emails`` key: a comma-separated list of addresses (required, de-duplicated)."""
    raw = config.get("emails")
    if raw is None or not str(raw).strip():
        raise ConfigError("emails is required: a comma-separated list of addresses", key="emails")
    addresses: list[str] = []
    for item in str(raw).split(","):
        address = item.strip()
        if not address:
            continue
        if not _valid_address(address):
            raise ConfigError(f"{address!r} is not an e-mail address (expected name@domain)", key="emails")
        if address.lower() not in (a.lower() for a in addresses):
            addresses.append(address)
    if not addresses:
        raise ConfigError("emails is required: a comma-separated list of addresses", key="emails")
    if len(addresses) > MAX_RECIPIENTS:
        raise ConfigError(f"at most {MAX_RECIPIENTS} addresses, got {len(addresses)}", key="emails")
    return addresses


def _parse_on(config: Mapping[str, str]) -> str:
    raw = config.get("on")
    value = str(raw).strip().lower() if raw is not None else ""
    if not value:
        return "always"
    if value not in ON_VALUES:
        raise ConfigError(f"on must be one of always, failure, success, got {raw!r}", key="on")
    return value


def _parse_subject(config: Mapping[str, str]) -> str:
    """The ``subject`` template ("" = Dkron's subject); checked so that rendering cannot fail."""
    raw = config.get("subject")
    value = str(raw).strip() if raw is not None else ""
    if not value:
        return ""
    if len(value) > MAX_SUBJECT:
        raise ConfigError(f"subject must be at most {MAX_SUBJECT} characters", key="subject")
    if _CONTROL.search(value):
        raise ConfigError("subject must not contain control characters (line breaks, tabs)", key="subject")
    for match in _SUBJECT_TOKEN.finditer(value):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        name = match.group(1)
        if name is None:
            raise ConfigError(f"unbalanced {token!r} in subject (write {token * 2} for a literal one)", key="subject")
        if name not in SUBJECT_FIELDS:
            known = ", ".join("{" + f + "}" for f in SUBJECT_FIELDS)
            raise ConfigError(f"unknown placeholder {{{name}}} in subject (known: {known})", key="subject")
    return value


@dataclass(frozen=True)
class JobOptions:
    emails: list[str]
    forward: bool
    on: str
    subject: str
    include_output: bool

    @classmethod
    def parse(cls, config: Mapping[str, str]) -> JobOptions:
        return cls(
            emails=parse_emails(config),
            forward=_parse_bool(config, "forward", False),
            on=_parse_on(config),
            subject=_parse_subject(config),
            include_output=_parse_bool(config, "include_output", True),
        )


# -- the message ---------------------------------------------------------------------------------


def _status(execution: Mapping[str, Any]) -> str:
    return "Success" if execution.get("success") is True else "Failed"


def render_subject(template: str, execution: Mapping[str, Any], prefix: str) -> str:
    """``<prefix><Success|Failed> <job> execution report``, or ``<prefix><template rendered>``."""
    values = {
        "job": str(execution.get("job_name") or ""),
        "status": _status(execution),
        "node": str(execution.get("node_name") or ""),
        "execution_id": str(execution.get("id") or ""),
        "attempt": str(execution.get("attempt") or ""),
    }
    if not template:
        body = f"{values['status']} {values['job']} execution report"
    else:

        def replace(match: re.Match[str]) -> str:
            token = match.group(0)
            if token in ("{{", "}}"):
                return token[0]
            return values.get(match.group(1) or "", token)

        body = _SUBJECT_TOKEN.sub(replace, template)
    return _CONTROL.sub(" ", f"{prefix}{body}")


def _output_text(execution: Mapping[str, Any]) -> tuple[str, int]:
    """The output's last :data:`MAX_OUTPUT_BYTES` as text, and how many bytes were left out."""
    output = execution.get("output")
    data = output if isinstance(output, bytes) else str(output or "").encode("utf-8", "replace")
    omitted = max(0, len(data) - MAX_OUTPUT_BYTES)
    if omitted:
        data = data[omitted:]
        # Do not start in the middle of a UTF-8 sequence.
        skip = 0
        while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
            skip += 1
        data, omitted = data[skip:], omitted + skip
    return data.decode("utf-8", "replace"), omitted


def build_body(execution: Mapping[str, Any], include_output: bool) -> str:
    """Dkron's report layout (``Executed:``, ``Start time:``, ...) followed by the output."""

    def value(key: str) -> str:
        item = execution.get(key)
        return "" if item is None else str(item)

    lines = [
        f"Executed: {value('job_name')}",
        f"Execution: {value('id')}",
        f"Node: {value('node_name')}",
        f"Attempt: {value('attempt')}",
        f"Start time: {value('started_at')}",
        f"End time: {value('finished_at')}",
        f"Success: {'true' if execution.get('success') is True else 'false'}",
    ]
    if execution.get("error"):
        lines.append(f"Error: {value('error')}")
    if execution.get("exit_code") is not None:
        lines.append(f"Exit code: {value('exit_code')}")
    if not include_output:
        lines.append("Output: (not included)")
        return "\n".join(lines) + "\n"
    text, omitted = _output_text(execution)
    notes = []
    if omitted:
        notes.append(f"the first {omitted} bytes are left out of this message")
    if execution.get("output_truncated"):
        notes.append("the agent kept only the tail of it")
    lines.append(f"Output:{' (' + '; '.join(notes) + ')' if notes else ''}")
    return "\n".join(lines) + "\n" + text


def build_message(
    execution: Mapping[str, Any], options: JobOptions, settings: SmtpSettings, recipients: list[str]
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = render_subject(options.subject, execution, settings.subject_prefix)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = settings.envelope_sender.rpartition("@")[2].strip("<>") or "localhost"
    message["Message-ID"] = make_msgid("dkron", domain=domain)
    message["X-Dkron-Job"] = _CONTROL.sub(" ", str(execution.get("job_name") or ""))
    message["X-Dkron-Execution"] = _CONTROL.sub(" ", str(execution.get("id") or ""))
    message.set_content(build_body(execution, options.include_output))
    return message


def placeholder(count: int) -> str:
    """What ``output`` becomes when ``forward`` is false."""
    return f"Output e-mailed to {count} recipient(s)"


# -- the processor -------------------------------------------------------------------------------


class EmailProcessor:
    """One instance per agent, holding the agent's settings; thread-safe (no mutable state)."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: Mapping[str, Any] = dict(settings or {})

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        pluginkit.check_keys(config, KNOWN_KEYS, suggest=False, known=_KNOWN_TEXT)
        options = JobOptions.parse(config)
        normalised = {key: str(value).strip() for key, value in config.items()}
        normalised["emails"] = ",".join(options.emails)
        for key in ("forward", "include_output"):
            if key in config:
                normalised[key] = "true" if getattr(options, key) else "false"
        if "on" in config:
            normalised["on"] = options.on
        if "subject" in config:
            normalised["subject"] = options.subject
        return normalised

    def process(self, execution: dict[str, Any], config: Mapping[str, str]) -> dict[str, Any]:
        job, execution_id = execution.get("job_name"), execution.get("id")
        try:
            options = JobOptions.parse(config)
        except ConfigError as exc:
            log.warning("email: job %r has an invalid email config (%s); nothing sent", job, exc)
            return execution
        succeeded = execution.get("success") is True
        if (options.on == "failure" and succeeded) or (options.on == "success" and not succeeded):
            return execution
        try:
            settings = SmtpSettings.from_settings(self.settings)
        except ValueError as exc:
            log.warning("email: cannot e-mail job %r execution %r: %s", job, execution_id, exc)
            return execution
        if not settings.host:
            log.warning(
                "email: cannot e-mail job %r execution %r: mail-host is not set on this agent", job, execution_id
            )
            return execution
        try:
            message = build_message(execution, options, settings, options.emails)
            accepted = send_message(settings, message, options.emails)
        except Exception as exc:  # never let a mail problem touch the execution record
            log.warning(
                "email: cannot e-mail job %r execution %r via %s:%s: %s",
                job,
                execution_id,
                settings.host,
                settings.effective_port,
                settings.redact(describe(exc)),
            )
            return execution
        log.info("email: job %r execution %r e-mailed to %d recipient(s)", job, execution_id, len(accepted))
        if options.forward:
            return execution
        return {**execution, "output": placeholder(len(accepted))}
