"""E-mail processor plugin for Python Dkron (entry point ``email`` in the ``dkron`` group)."""

from __future__ import annotations

from dkron import hookimpl
from dkron.contracts import ProcessorRegistry
from dkron_processor_email.processor import EmailProcessor

__all__ = ["EmailProcessor", "dkron_register_processors"]


@hookimpl
def dkron_register_processors(registry: ProcessorRegistry) -> None:
    # The instance keeps the agent's settings (mail-host, ...): processors run where the job ran,
    # so each node e-mails through its own SMTP configuration.
    registry.add("email", EmailProcessor(registry.settings))
