"""Kafka executor plugin for Python Dkron (entry point ``kafka`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ExecutorRegistry
from dkron_executor_kafka.executor import KafkaExecutor

__all__ = ["KafkaExecutor", "dkron_register_executors"]


@hookimpl
def dkron_register_executors(registry: ExecutorRegistry) -> None:
    registry.add("kafka", KafkaExecutor)
