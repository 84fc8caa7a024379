"""The ``shell`` executor: runs a job's command on the agent, like Dkron's shell executor."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest, ExecutionResult, OutputSink
from dkron_executor_shell.config import CONFIG_SCHEMA, ShellConfig, parse_config, validate_config
from dkron_executor_shell.runner import run

log = logging.getLogger(__name__)

__all__ = ["ShellExecutor", "child_environment"]


def child_environment(cfg: ShellConfig, request: ExecutionRequest) -> dict[str, str]:
    """Agent environment + the job's ``env`` + the variables that identify this execution.

    The identifying variables are set last so a job's ``env`` cannot spoof them (in Dkron too,
    ``ENV_JOB_NAME`` is appended after the job's variables and wins).
    """
    env = os.environ.copy()
    env.update(cfg.env)
    env["ENV_JOB_NAME"] = request.job_name
    env["DKRON_JOB_NAME"] = request.job_name
    env["DKRON_RUN_ID"] = request.run_id
    env["DKRON_EXECUTION_ID"] = request.execution_id
    env["DKRON_ATTEMPT"] = str(request.attempt)
    env["DKRON_SCHEDULED_AT"] = request.scheduled_at
    env["DKRON_NODE_NAME"] = request.node_name
    return env


class ShellExecutor:
    """Stateless, so one instance safely serves every execution on the agent concurrently."""

    #: The config's fields, for forms such as the web UI's job editor.
    config_schema = CONFIG_SCHEMA
    #: ``secret_env`` holds environment variables whose values are secrets (same forms as ``env``).
    secret_keys = frozenset({"secret_env"})

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        return validate_config(config)

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        try:
            cfg = parse_config(request.config)
        except ConfigError as exc:  # the core normally validated already; report, never raise
            return ExecutionResult(success=False, error=f"shell: invalid config: {exc}")
        if cancel.cancelled:
            return ExecutionResult(success=False, error=f"shell: killed: {cancel.reason}")
        try:
            return run(cfg, child_environment(cfg, request), output, cancel)
        except Exception as exc:
            # run() already killed and reaped the child; the worker thread must survive.
            log.exception("shell: job %s failed unexpectedly", request.job_name)
            return ExecutionResult(success=False, error=f"shell: internal error: {exc!r}")
