"""RabbitMQ executor plugin for Python Dkron (entry point ``rabbitmq`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ExecutorRegistry
from dkron_executor_rabbitmq.executor import RabbitMQExecutor

__all__ = ["RabbitMQExecutor", "dkron_register_executors"]


@hookimpl
def dkron_register_executors(registry: ExecutorRegistry) -> None:
    registry.add("rabbitmq", RabbitMQExecutor)
