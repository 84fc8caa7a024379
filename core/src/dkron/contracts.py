"""What an executor or processor plugin implements, and the registries they are added to.

An executor runs one execution of a job on the node it was dispatched to. It is given an
:class:`ExecutionRequest`, writes output incrementally to an :class:`OutputSink` (which streams
it to the leader as it is produced) and must stop promptly once its :class:`CancelToken` is
set (timeouts, shutdown, and kill requests all cancel through it).

A processor transforms a finished execution record (for example writes its output to a file
and replaces it with a placeholder), on the node where the job ran.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CancelToken",
    "ConfigError",
    "ConfigField",
    "ExecutionRequest",
    "ExecutionResult",
    "Executor",
    "ExecutorRegistry",
    "OutputSink",
    "PreparedExecution",
    "Processor",
    "ProcessorRegistry",
    "RegistrationError",
]


class ConfigError(ValueError):
    """An executor or processor config is invalid.

    ``key`` names the offending config key (or is ``None`` for the config as a whole); the
    message says what to fix. The API turns it into a 400 naming the key.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


#: The kinds of input a :class:`ConfigField` can ask for (how the web UI draws it).
FIELD_KINDS = ("text", "textarea", "number", "bool", "select", "duration", "json", "password")


@dataclass(frozen=True)
class ConfigField:
    """One key of an executor's ``executor_config``, declared for forms (the web UI).

    Optional: an executor without a schema is edited as raw JSON. Declaring one does not change
    validation, which stays in ``validate``; values are still strings on the wire (``bool``
    fields send ``"true"``/``"false"``).
    """

    name: str
    label: str = ""
    kind: str = "text"
    required: bool = False
    default: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()
    placeholder: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise RegistrationError(f"config field {self.name!r}: kind must be one of {', '.join(FIELD_KINDS)}")
        if self.kind == "select" and not self.choices:
            raise RegistrationError(f"config field {self.name!r}: a select needs choices")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label or self.name,
            "kind": self.kind,
            "required": self.required,
            "default": self.default,
            "help": self.help,
            "choices": list(self.choices),
            "placeholder": self.placeholder,
        }


class RegistrationError(ValueError):
    """A plugin tried to register a name twice, or something that is not an executor."""


class CancelToken:
    """Set when an execution must stop: its timeout passed, it was killed, or the agent stops."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str = ""

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds; return True once cancelled."""
        return self._event.wait(timeout)


class OutputSink(Protocol):
    """Where an executor writes its output, in chunks, as it is produced."""

    def write(self, chunk: bytes | str) -> None: ...


@dataclass(frozen=True)
class ExecutionRequest:
    """One execution handed to an executor."""

    job_name: str
    #: Deterministic id of the run (same for every attempt of one scheduled tick's launch on
    #: one node). Executors pass it on (shell: ``DKRON_RUN_ID``) so jobs can be idempotent.
    run_id: str
    #: The job's ``executor_config``, already validated and normalised by ``Executor.validate``.
    config: Mapping[str, str]
    attempt: int = 1
    execution_id: str = ""
    #: The node the execution runs on.
    node_name: str = ""
    #: Scheduled time of the launch as an RFC 3339 string ("" for manual runs).
    scheduled_at: str = ""
    #: Job metadata, for executors that want it.
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ExecutionResult:
    """What an executor returns. ``error`` is a one-line reason shown before the output."""

    success: bool
    error: str = ""
    exit_code: int | None = None


@runtime_checkable
class Executor(Protocol):
    """An executor plugin. One instance serves every execution on an agent (thread-safe)."""

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        """Check a job's ``executor_config`` at submission; return it normalised.

        Raise :class:`ConfigError` naming the key to fix. Values arrive as strings (the core
        coerces JSON numbers and booleans). Must not do I/O: it runs in the API request.
        """
        ...

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        """Run one execution, writing output to ``output``; return when done or cancelled."""
        ...

    # Optional (not part of the runtime check, so executors without it still register):
    #
    # def prepare(self, request, output, cancel) -> PreparedExecution | None:
    #     """Make an execution that is due later ready now (e.g. spawn its process, waiting).
    #     Called ahead of runs the leader sent before their time; None: use ``execute`` then."""


class PreparedExecution(Protocol):
    """An execution an executor made ready before its start time (see ``Executor.prepare``).

    The core calls either :meth:`start` then :meth:`wait`, or only :meth:`discard`; each once.
    """

    def start(self) -> None:
        """Begin the execution now. Must be quick and must not block (it runs at the second)."""
        ...

    def wait(self) -> ExecutionResult:
        """After :meth:`start`: follow the execution until it ends, as ``execute`` would."""
        ...

    def discard(self) -> None:
        """The execution will not start (killed, or the node stops): release what was prepared."""
        ...


@runtime_checkable
class Processor(Protocol):
    """A processor plugin: post-processes a finished execution on the node where it ran."""

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        """Check the job's config for this processor; raise :class:`ConfigError`."""
        ...

    def process(self, execution: dict[str, Any], config: Mapping[str, str]) -> dict[str, Any]:
        """Return the execution record, possibly changed (e.g. ``output`` replaced)."""
        ...


class _Registry:
    kind = "plugin"
    protocol: type = object

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self._items: dict[str, Any] = {}
        self._owners: dict[str, str] = {}
        self._secret_keys: dict[str, frozenset[str]] = {}
        #: The agent's configuration (option name -> value, e.g. ``settings["mail-host"]``), for
        #: plugins that need agent-wide settings such as SMTP. Empty outside an agent.
        self.settings: Mapping[str, Any] = dict(settings or {})
        #: Set by the plugin manager while a given plugin's hook runs, for attribution.
        self.current_plugin: str = ""

    def add(self, name: str, item: Any, *, secret_keys: Any = None) -> None:
        """Register ``item`` under ``name``. A class is instantiated once, with no arguments.

        ``secret_keys`` names the config keys whose values are secrets (passwords, tokens): the
        API, the audit log and notifications show them as ``********``. Without the argument, an
        optional ``secret_keys`` attribute of the item is used (so plugins that declare it still
        load on older cores, which ignore it).
        """
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise RegistrationError(f"{self.kind} name must be a non-empty word, got {name!r}")
        if name in self._items:
            raise RegistrationError(f"{self.kind} {name!r} is already registered by plugin {self._owners[name]!r}")
        instance = item() if isinstance(item, type) else item
        if not isinstance(instance, self.protocol):
            raise RegistrationError(f"{self.kind} {name!r} does not implement {self.protocol.__name__}")
        self._items[name] = instance
        self._owners[name] = self.current_plugin
        declared = secret_keys if secret_keys is not None else getattr(instance, "secret_keys", ())
        if isinstance(declared, str) or not all(isinstance(key, str) for key in declared):
            raise RegistrationError(f"{self.kind} {name!r}: secret_keys must be a collection of key names")
        self._secret_keys[name] = frozenset(declared)

    def secret_keys(self, name: str) -> frozenset[str]:
        """The config keys of ``name`` whose values must never be shown."""
        return self._secret_keys.get(name, frozenset())

    def get(self, name: str) -> Any | None:
        return self._items.get(name)

    def owner(self, name: str) -> str:
        return self._owners.get(name, "")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything ``plugin`` registered (used when its registration hook fails)."""
        for name in [n for n, owner in self._owners.items() if owner == plugin]:
            del self._items[name]
            del self._owners[name]
            self._secret_keys.pop(name, None)


class ExecutorRegistry(_Registry):
    """Executors by name (``shell``, ``http``, ...).

    An executor may declare the fields of its config for forms, either as a ``config_schema``
    attribute (a sequence of :class:`ConfigField`) or with ``add(name, item, config_schema=...)``.
    """

    kind = "executor"
    protocol = Executor

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._schemas: dict[str, tuple[ConfigField, ...]] = {}

    def add(
        self,
        name: str,
        item: Any,
        config_schema: Sequence[ConfigField] | None = None,
        *,
        secret_keys: Any = None,
    ) -> None:
        super().add(name, item, secret_keys=secret_keys)
        schema = config_schema if config_schema is not None else getattr(self._items[name], "config_schema", None)
        if schema is not None:
            fields = tuple(schema)
            if not all(isinstance(f, ConfigField) for f in fields):
                del self._items[name], self._owners[name], self._secret_keys[name]
                raise RegistrationError(f"executor {name!r}: config_schema must be a sequence of ConfigField")
            self._schemas[name] = fields

    def get(self, name: str) -> Executor | None:
        return self._items.get(name)

    def schema(self, name: str) -> list[dict[str, Any]] | None:
        """The declared config fields of ``name`` (None: not declared, edit the config as JSON)."""
        fields = self._schemas.get(name)
        return None if fields is None else [f.as_dict() for f in fields]

    def remove_plugin(self, plugin: str) -> None:
        super().remove_plugin(plugin)
        for name in [n for n in self._schemas if n not in self._items]:
            del self._schemas[name]


class ProcessorRegistry(_Registry):
    """Processors by name (``log``, ``files``, ...)."""

    kind = "processor"
    protocol = Processor

    def get(self, name: str) -> Processor | None:
        return self._items.get(name)


#: Type of a factory the tests and the agent use to build registries from chosen plugins.
RegistryFactory = Callable[[], tuple[ExecutorRegistry, ProcessorRegistry]]
