"""Cluster pages: dashboard, busy (running executions), nodes, plugins."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from dkron.api.app import agent
from dkron.api.preview import executor_listing
from dkron.api.ui import bp
from dkron.api.ui.common import is_fragment, page
from dkron.jobs import format_time

Page = tuple[str, int, dict[str, str]]


def _members() -> list[dict[str, Any]]:
    members = []
    for m in agent().members():
        tags = dict(m["Tags"])
        server = tags.pop("server", "false") == "true"
        version = tags.pop("version", "")
        rpc = tags.pop("rpc_addr", "")
        members.append(
            {
                "name": m["Name"],
                "leader": m["leader"],
                "server": server,
                "version": version,
                "rpc_addr": rpc,
                "status": m["statusText"],
                "tags": tags,
            }
        )
    return sorted(members, key=lambda m: (not m["leader"], not m["server"], m["name"]))


def _running() -> list[dict[str, Any]]:
    return sorted(agent().busy(), key=lambda e: e.get("started_at") or "")


# Kept for 20x the time they took to count (2 s to 60 s): cheap counts stay fresh, and with
# hundreds of thousands of runs an hour an open dashboard costs at most 5 % of a core.
_run_counts: dict[str, tuple[float, dict[str, int]]] = {}
_run_counts_lock = threading.Lock()


def _runs_last_hour() -> dict[str, int]:
    """Runs of the last hour by status (one computation at a time, cached; see above)."""
    reader = agent().reader
    cached = _run_counts.get(reader.path)
    if cached is not None and time.monotonic() < cached[0]:
        return cached[1]
    with _run_counts_lock:
        cached = _run_counts.get(reader.path)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        since = format_time(datetime.now(UTC) - timedelta(hours=1)) or ""
        started = time.monotonic()
        counts = reader.run_counts_since(since)
        spent = time.monotonic() - started
        _run_counts[reader.path] = (time.monotonic() + min(60.0, max(2.0, 20 * spent)), counts)
        return counts


@bp.get("/ui/")
def dashboard() -> Page:
    node = agent()
    runs = _runs_last_hour()
    context = {
        "members": _members(),
        "counts": node.reader.counts(),
        "runs": {
            "success": runs.get("success", 0),
            "failed": runs.get("failed", 0) + runs.get("lost", 0),
            "missed": runs.get("missed", 0),
            "skipped": runs.get("skipped", 0),
        },
        "running": _running(),
    }
    if is_fragment():
        return page("_dashboard.html", **context)
    return page("dashboard.html", title="Dashboard", **context)


@bp.get("/ui/busy")
def busy() -> Page:
    context = {"running": _running()}
    if is_fragment():
        return page("_busy.html", **context)
    return page("busy.html", title="Busy", **context)


@bp.get("/ui/nodes")
def nodes() -> Page:
    return page("nodes.html", title="Nodes", members=_members())


@bp.get("/ui/plugins")
def plugins() -> Page:
    node = agent()
    return page("plugins.html", title="Plugins", plugins=node.plugins.listing(), executors=executor_listing())
