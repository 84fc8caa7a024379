"""Files processor plugin for Python Dkron (entry point ``files`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ProcessorRegistry
from dkron_processor_files.processor import FilesProcessor

__all__ = ["FilesProcessor", "dkron_register_processors"]


@hookimpl
def dkron_register_processors(registry: ProcessorRegistry) -> None:
    registry.add("files", FilesProcessor)
