"""The ``syslog`` processor: sends each execution's output to syslog, like Dkron's.

Dkron's plugin writes to the local syslog only (priority INFO, facility CRON, tag ``dkron``).
This one writes there by default too, and can also send to a remote receiver over UDP or TCP.
One message per execution: a summary line (job, execution id, success) and the output. A
failure to send never fails anything: it is logged as a warning and the execution is returned
unchanged (with its output, since the output did not reach syslog).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dkron import pluginkit
from dkron.contracts import ConfigError
from dkron.pluginkit import parse_forward
from dkron_processor_syslog.transport import FACILITIES, TIMEOUT, Address, frame, parse_address, send

__all__ = ["KNOWN_KEYS", "PLACEHOLDER", "SyslogConfig", "SyslogProcessor", "parse_config", "parse_forward"]

log = logging.getLogger("dkron.processor.syslog")

#: What ``output`` becomes when ``forward`` is false (Dkron's exact text).
PLACEHOLDER = "Output in syslog"
DEFAULT_FACILITY = "cron"
DEFAULT_TAG = "dkron"

# Syslog severities (RFC 5424).
SEVERITY_INFO = 6
SEVERITY_WARNING = 4

#: RFC 3164's TAG is at most 32 alphanumeric characters; we also allow ``_ . - /``.
_TAG = re.compile(r"[A-Za-z0-9_./-]{1,32}\Z")

#: ``reporting_node`` is injected by Dkron into every processor's config: accept it.
KNOWN_KEYS = frozenset({"forward", "address", "facility", "tag", "reporting_node"})
_KNOWN_TEXT = f"the syslog processor knows {', '.join(sorted(KNOWN_KEYS - {'reporting_node'}))}"


@dataclass(frozen=True)
class SyslogConfig:
    forward: bool
    address: Address
    facility: str
    tag: str

    def priority(self, success: bool) -> int:
        return FACILITIES[self.facility] * 8 + (SEVERITY_INFO if success else SEVERITY_WARNING)


def parse_config(config: Mapping[str, str]) -> SyslogConfig:
    pluginkit.check_keys(config, KNOWN_KEYS, suggest=False, known=_KNOWN_TEXT)
    forward = parse_forward(config)
    try:
        address = parse_address(config.get("address", ""))
    except ValueError as exc:
        raise ConfigError(f"address: {exc}", key="address") from None
    facility = config.get("facility", "").strip().lower() or DEFAULT_FACILITY
    if facility not in FACILITIES:
        names = ", ".join(sorted(FACILITIES))
        raise ConfigError(f"facility must be one of {names}, got {config['facility']!r}", key="facility")
    tag = config.get("tag", "").strip() or DEFAULT_TAG
    if not _TAG.match(tag):
        raise ConfigError(f"tag must be 1-32 letters, digits or _ . - / (no spaces), got {config['tag']!r}", key="tag")
    return SyslogConfig(forward, address, facility, tag)


def summary_line(execution: Mapping[str, Any]) -> str:
    success = "true" if execution.get("success") else "false"
    return f"job={execution.get('job_name', '')} execution={execution.get('id', '')} success={success}\n"


class SyslogProcessor:
    """Stateless; one instance serves every execution (one short-lived socket per message)."""

    #: Seconds allowed for connecting and sending (tests lower it).
    timeout = TIMEOUT

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        parsed = parse_config(config)
        normalised = {key: str(value).strip() for key, value in config.items()}
        if "forward" in config:
            normalised["forward"] = "true" if parsed.forward else "false"
        if "facility" in config:
            normalised["facility"] = parsed.facility
        return normalised

    def process(self, execution: dict[str, Any], config: Mapping[str, str]) -> dict[str, Any]:
        job, execution_id = execution.get("job_name", ""), execution.get("id", "")
        try:
            cfg = parse_config(config)
            output = execution.get("output") or ""
            if isinstance(output, bytes):
                output = output.decode("utf-8", errors="replace")
            data = frame(
                cfg.address,
                cfg.priority(bool(execution.get("success"))),
                cfg.tag,
                summary_line(execution),
                output.rstrip("\n"),
            )
            send(cfg.address, data, self.timeout)
        except Exception as exc:  # never fail or alter the execution because syslog is unreachable
            where = config.get("address", "") or "the local syslog"
            log.warning(
                "syslog processor: could not send job %s execution %s to %s (output kept): %s",
                job,
                execution_id,
                where,
                exc,
            )
            return execution
        if cfg.forward:
            return execution
        return {**execution, "output": PLACEHOLDER}
