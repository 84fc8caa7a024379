"""Log processor plugin for Python Dkron (entry point ``log`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ProcessorRegistry
from dkron_processor_log.processor import LogProcessor

__all__ = ["LogProcessor", "dkron_register_processors"]


@hookimpl
def dkron_register_processors(registry: ProcessorRegistry) -> None:
    registry.add("log", LogProcessor)
