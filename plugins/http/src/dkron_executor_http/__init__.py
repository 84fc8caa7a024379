"""HTTP executor plugin for Python Dkron (entry point ``http`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ExecutorRegistry
from dkron_executor_http.executor import HttpExecutor

__all__ = ["HttpExecutor", "dkron_register_executors"]


@hookimpl
def dkron_register_executors(registry: ExecutorRegistry) -> None:
    registry.add("http", HttpExecutor)
