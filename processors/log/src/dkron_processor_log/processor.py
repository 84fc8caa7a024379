"""The ``log`` processor: writes an execution's output to the agent's log, like Dkron's.

Dkron's plugin prints to its stdout (success) or stderr (failure); here the equivalent is the
Python logger ``dkron.processor.log`` at INFO (success) or WARNING (failure), so the agent's
logging configuration decides where it ends up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dkron.contracts import ConfigError

__all__ = ["LOGGER_NAME", "PLACEHOLDER", "LogProcessor", "parse_forward"]

LOGGER_NAME = "dkron.processor.log"
#: What ``output`` becomes when ``forward`` is false (Dkron's exact text).
PLACEHOLDER = "Output in dkron log"

log = logging.getLogger(LOGGER_NAME)

# strconv.ParseBool spellings, as Dkron parses ``forward``.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

#: Keys a job may set. ``reporting_node`` is injected by Dkron into every processor's config
#: (the node that processed the execution), so it must not be rejected.
KNOWN_KEYS = frozenset({"forward", "reporting_node"})


def parse_forward(config: Mapping[str, str]) -> bool:
    """The ``forward`` flag (default false); raises :class:`ConfigError` if it is not a bool."""
    raw = config.get("forward", "false")
    value = raw.strip() if isinstance(raw, str) else raw
    if value in _TRUE:
        return True
    if value in _FALSE or value == "":
        return False
    raise ConfigError(f"forward must be true or false, got {raw!r}", key="forward")


class LogProcessor:
    """Stateless; one instance serves every execution."""

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        for key in config:
            if key not in KNOWN_KEYS:
                raise ConfigError(f"unknown key {key!r} (the log processor only knows 'forward')", key=key)
        normalised = {key: str(value).strip() for key, value in config.items()}
        if "forward" in config:
            normalised["forward"] = "true" if parse_forward(config) else "false"
        return normalised

    def process(self, execution: dict[str, Any], config: Mapping[str, str]) -> dict[str, Any]:
        forward = parse_forward(config)
        output = execution.get("output") or ""
        if isinstance(output, bytes):
            output = output.decode("utf-8", errors="replace")
        # One record, not three: concurrent executions would otherwise interleave their lines.
        job, execution_id = execution.get("job_name", ""), execution.get("id", "")
        body = output.rstrip("\n")
        message = f"----- BEGIN OUTPUT job={job} execution={execution_id} -----\n{body}\n----- END OUTPUT -----"
        level = logging.INFO if execution.get("success") else logging.WARNING
        log.log(level, "%s", message)
        if forward:
            return execution
        return {**execution, "output": PLACEHOLDER}
