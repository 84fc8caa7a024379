"""The ``log`` processor: writes an execution's output to the agent's log, like Dkron's.

Dkron's plugin prints to its stdout (success) or stderr (failure); here the equivalent is the
Python logger ``dkron.processor.log`` at INFO (success) or WARNING (failure), so the agent's
logging configuration decides where it ends up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dkron import pluginkit
from dkron.pluginkit import parse_forward

__all__ = ["LOGGER_NAME", "PLACEHOLDER", "LogProcessor", "parse_forward"]

LOGGER_NAME = "dkron.processor.log"
#: What ``output`` becomes when ``forward`` is false (Dkron's exact text).
PLACEHOLDER = "Output in dkron log"

log = logging.getLogger(LOGGER_NAME)

#: Keys a job may set. ``reporting_node`` is injected by Dkron into every processor's config
#: (the node that processed the execution), so it must not be rejected.
KNOWN_KEYS = frozenset({"forward", "reporting_node"})


class LogProcessor:
    """Stateless; one instance serves every execution."""

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        pluginkit.check_keys(config, KNOWN_KEYS, suggest=False, known="the log processor only knows 'forward'")
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
