"""Template executor plugin for Python Dkron: copy this folder to write your own executor.

A job ``{"executor": "template", "executor_config": {"message": "hello"}}`` writes ``hello`` to
its output and succeeds. Replace :class:`TemplateExecutor`'s ``validate`` and ``execute`` with
your own; keep the shape (see docs/plugins.md, "The executor contract").

To make it yours, rename ``template`` in the 4 places marked RENAME (README.md has a ``sed`` line
that does all of them, the tests' import included):

1. ``pyproject.toml``: the distribution ``name`` (``dkron-executor-<name>``);
2. ``pyproject.toml``: the entry point (``<name> = "dkron_executor_<name>"``);
3. this package's folder, ``src/dkron_executor_template/`` (``src/dkron_executor_<name>/``);
4. :data:`EXECUTOR_NAME` below: what jobs write in their ``executor`` field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dkron import hookimpl
from dkron.contracts import CancelToken, ConfigError, ExecutionRequest, ExecutionResult, ExecutorRegistry, OutputSink

__all__ = ["EXECUTOR_NAME", "MAX_MESSAGE_BYTES", "TemplateExecutor", "dkron_register_executors"]

# Log through the standard logging module: lines land in the agent's log, named after your module.
log = logging.getLogger(__name__)

#: RENAME 4/4: the executor's name, as jobs write it in ``"executor": "..."``.
EXECUTOR_NAME = "template"

#: The config keys this executor accepts. Rejecting unknown keys turns a typo into a 400 at
#: submission instead of a job that silently ignores a setting.
KNOWN_KEYS = frozenset({"message"})

#: An example of a limit checked at submission rather than at run time.
MAX_MESSAGE_BYTES = 64 * 1024


class TemplateExecutor:  # RENAME (optional): a class name of your choice, e.g. EchoExecutor
    """Writes ``executor_config["message"]`` to the output.

    One instance serves every execution on the agent, from several threads at once: keep no
    per-execution state on ``self`` (build clients per execution, or guard shared ones).
    """

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        """Check a job's ``executor_config`` when the job is submitted; return it normalised.

        Values arrive as strings (the core turns JSON numbers and booleans into ``"3"``,
        ``"true"``). Raise ``ConfigError(message, key=...)``: the API answers 400 with
        ``executor_config.<key>: <message>``. No I/O here: it runs inside the API request.
        """
        for key in config:
            if key not in KNOWN_KEYS:
                raise ConfigError(f"unknown key {key!r} (known keys: {', '.join(sorted(KNOWN_KEYS))})", key=key)
        message = config.get("message", "")
        if not isinstance(message, str) or not message.strip():
            raise ConfigError("message is required", key="message")
        if len(message.encode()) > MAX_MESSAGE_BYTES:
            raise ConfigError(f"message must be at most {MAX_MESSAGE_BYTES} bytes", key="message")
        # What you return is what is stored and what execute() gets as request.config.
        return {"message": message}

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        """Run one execution of the job; called in a worker thread of the agent.

        * ``request.config`` is what :meth:`validate` returned; ``request.run_id`` is the same for
          every retry of one scheduled run (pass it on to make your job idempotent).
        * Write output as it is produced with ``output.write(str_or_bytes)``.
        * ``cancel`` is set on kill, timeout and shutdown: check ``cancel.cancelled`` (or wait with
          ``cancel.wait(seconds)`` instead of ``time.sleep``) and return promptly.
        * Return ``ExecutionResult(success=False, error="one-line reason")`` for a failure. An
          exception also fails the execution (with its traceback), but a clear reason is kinder.
        """
        if cancel.cancelled:
            return ExecutionResult(success=False, error=f"{EXECUTOR_NAME}: killed: {cancel.reason}")
        log.debug("%s: job %s run %s", EXECUTOR_NAME, request.job_name, request.run_id)
        output.write(request.config["message"] + "\n")
        return ExecutionResult(success=True)


@hookimpl
def dkron_register_executors(registry: ExecutorRegistry) -> None:
    """Called once when the agent loads its plugins: add your executor(s) by name."""
    registry.add(EXECUTOR_NAME, TemplateExecutor)
