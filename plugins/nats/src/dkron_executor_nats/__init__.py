"""NATS executor plugin for Python Dkron (entry point ``nats`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ExecutorRegistry
from dkron_executor_nats.executor import NatsExecutor

__all__ = ["NatsExecutor", "dkron_register_executors"]


@hookimpl
def dkron_register_executors(registry: ExecutorRegistry) -> None:
    registry.add("nats", NatsExecutor)
