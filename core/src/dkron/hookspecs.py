"""Hook specifications: declarations only, no behaviour.

Every hook is named ``dkron_*``. Plugins implement them with ``@hookimpl``
(``from dkron import hookimpl``) in a module exposed through the ``dkron``
entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from dkron.contracts import ExecutorRegistry, ProcessorRegistry

PROJECT_NAME = "dkron"

_spec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations; plugins import it as ``from dkron import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@_spec
def dkron_register_executors(registry: ExecutorRegistry) -> None:
    """Register executors that jobs can name in their ``executor`` field.

    Called once when the agent loads its plugins. Call ``registry.add(name, executor)``
    for each executor; the return value is ignored.

    :param registry: the agent's executor registry.

    .. versionadded:: 0.1
    """


@_spec
def dkron_register_processors(registry: ProcessorRegistry) -> None:
    """Register execution processors that jobs can list in their ``processors`` field.

    Called once when the agent loads its plugins. Call ``registry.add(name, processor)``
    for each processor; the return value is ignored.

    :param registry: the agent's processor registry.

    .. versionadded:: 0.1
    """
