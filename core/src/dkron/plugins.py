"""The plugin host: finds plugins through the ``dkron`` entry-point group and isolates failures.

Unlike pluggy's ``load_setuptools_entrypoints``, one broken plugin (failing import, raising
registration hook, unknown hook names) is logged, listed with its error and skipped; every
other plugin still loads and the agent still starts.

Environment:
  ``DKRON_LOAD_PLUGINS``      comma-separated allow-list of entry-point names ("" = load none).
  ``DKRON_DISABLED_PLUGINS``  comma-separated block-list.
  ``DKRON_TRACE_PLUGINS=1``   log every hook call.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from dkron import hookspecs
from dkron.contracts import ExecutorRegistry, ProcessorRegistry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dkron"


@dataclass
class PluginInfo:
    """One plugin as ``dkron plugins`` and ``GET /v1/plugins`` show it."""

    name: str
    distribution: str = ""
    version: str = ""
    hooks: list[str] = field(default_factory=list)
    executors: list[str] = field(default_factory=list)
    processors: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": self.hooks,
            "executors": self.executors,
            "processors": self.processors,
            "error": self.error or None,
        }


class _Manager(pluggy.PluginManager):
    """Only ``dkron_*`` functions count as hook implementations."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        if not name.startswith("dkron_"):
            return None
        return super().parse_hookimpl_opts(plugin, name)


def _env_list(name: str) -> set[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return {item.strip() for item in raw.split(",") if item.strip()}


def _short_error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class PluginHost:
    """Loads plugins and builds the executor and processor registries from them."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.pm = _Manager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.executors = ExecutorRegistry(settings)
        self.processors = ProcessorRegistry(settings)
        if os.environ.get("DKRON_TRACE_PLUGINS") == "1":
            self.pm.trace.root.setwriter(log.info)
            self.pm.enable_tracing()

    # -- loading -----------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Register every installed plugin of the ``dkron`` group, honouring allow/block lists."""
        allow = _env_list("DKRON_LOAD_PLUGINS")
        block = _env_list("DKRON_DISABLED_PLUGINS") or set()
        seen: set[str] = set()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            if (allow is not None and ep.name not in allow) or ep.name in block:
                log.info("plugin %s not loaded (DKRON_LOAD_PLUGINS / DKRON_DISABLED_PLUGINS)", ep.name)
                continue
            dist = ep.dist
            info = PluginInfo(
                name=ep.name,
                distribution=dist.metadata["Name"] if dist else "",
                version=dist.version if dist else "",
            )
            self.infos[ep.name] = info
            try:
                module = ep.load()
            except Exception as exc:  # any failure at import: report and skip this plugin only
                log.exception("plugin %s failed to load, skipping it", ep.name)
                info.error = f"import failed: {_short_error(exc)}"
                continue
            self.register(module, ep.name, info)

    def register(self, plugin: ModuleType | object, name: str, info: PluginInfo | None = None) -> None:
        """Register one plugin object (module or instance); used for entry points and tests."""
        info = info or self.infos.setdefault(name, PluginInfo(name=name))
        self.infos[name] = info
        try:
            self.pm.register(plugin, name=name)
            # Fail this plugin (only) if it implements a dkron_* hook that does not exist.
            for hook_caller in self.pm.get_hookcallers(plugin) or []:
                if not hook_caller.has_spec():
                    raise pluggy.PluginValidationError(plugin, f"unknown hook {hook_caller.name!r}")
        except Exception as exc:
            log.error("plugin %s rejected: %s", name, exc)
            info.error = f"registration failed: {_short_error(exc)}"
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            return
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])

    def build_registries(self) -> None:
        """Run the registration hooks plugin by plugin, so one failure cannot hide the others."""
        for registry, hook_name, attr in (
            (self.executors, "dkron_register_executors", "executors"),
            (self.processors, "dkron_register_processors", "processors"),
        ):
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                info = self.infos.get(impl.plugin_name) or PluginInfo(name=impl.plugin_name)
                if info.error:
                    continue
                registry.current_plugin = impl.plugin_name
                try:
                    impl.function(registry)
                except Exception as exc:
                    log.exception("plugin %s failed in %s, skipping it", impl.plugin_name, hook_name)
                    info.error = f"{hook_name} failed: {_short_error(exc)}"
                    self.executors.remove_plugin(impl.plugin_name)
                    self.processors.remove_plugin(impl.plugin_name)
                finally:
                    registry.current_plugin = ""
            for name in registry.names():
                owner = self.infos.get(registry.owner(name))
                if owner is not None and name not in getattr(owner, attr):
                    getattr(owner, attr).append(name)

    # -- reporting ---------------------------------------------------------------------------
    def listing(self) -> list[dict[str, Any]]:
        return [info.as_dict() for _, info in sorted(self.infos.items())]


def load_plugins(settings: dict[str, Any] | None = None) -> PluginHost:
    """Load every installed plugin and build the registries (what the agent does at start)."""
    host = PluginHost(settings)
    host.load_entry_points()
    host.build_registries()
    return host
