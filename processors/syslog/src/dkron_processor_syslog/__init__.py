"""Syslog processor plugin for Python Dkron (entry point ``syslog`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ProcessorRegistry
from dkron_processor_syslog.processor import PLACEHOLDER, SyslogProcessor

__all__ = ["PLACEHOLDER", "SyslogProcessor", "dkron_register_processors"]


@hookimpl
def dkron_register_processors(registry: ProcessorRegistry) -> None:
    registry.add("syslog", SyslogProcessor)
