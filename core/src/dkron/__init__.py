"""Python Dkron: a distributed, fault-tolerant cron.

Plugin authors need only ``from dkron import hookimpl``.
"""

from dkron.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
