"""Shell executor plugin for Python Dkron (entry point ``shell`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ExecutorRegistry
from dkron_executor_shell.executor import ShellExecutor

__all__ = ["ShellExecutor", "dkron_register_executors"]


@hookimpl
def dkron_register_executors(registry: ExecutorRegistry) -> None:
    registry.add("shell", ShellExecutor)
