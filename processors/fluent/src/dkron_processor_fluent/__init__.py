"""Fluent processor plugin for Python Dkron (entry point ``fluent`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ProcessorRegistry
from dkron_processor_fluent.processor import PLACEHOLDER, FluentProcessor

__all__ = ["PLACEHOLDER", "FluentProcessor", "dkron_register_processors"]


@hookimpl
def dkron_register_processors(registry: ProcessorRegistry) -> None:
    registry.add("fluent", FluentProcessor)
