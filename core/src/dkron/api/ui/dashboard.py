"""Cluster pages: dashboard, busy (running executions), nodes, plugins."""

from __future__ import annotations

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


@bp.get("/ui/")
def dashboard() -> Page:
    node = agent()
    since = format_time(datetime.now(UTC) - timedelta(hours=1)) or ""
    runs = node.reader.run_counts_since(since)
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
