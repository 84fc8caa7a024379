"""The web UI: server-rendered pages under ``/ui/`` (Jinja templates, htmx, a small script).

Pages read through the store's Reader (paged, sorted and filtered in SQL); every action (run,
enable/disable, delete, kill, create, edit) is a call from the browser to the ``/v1`` API, so
the API's authorization applies to it. Views are split by page: ``dashboard`` (dashboard, busy,
nodes, plugins), ``jobs`` (jobs list, job, execution), ``editor`` (create/edit), ``session``
(login/logout).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, redirect, send_from_directory

from dkron import __version__
from dkron.jobs import parse_time

bp = Blueprint("ui", __name__, template_folder="templates")
STATIC_DIR = Path(__file__).parent / "static"
#: Static URLs carry the version (``?v=``), so browsers may keep them for a day without going stale.
STATIC_MAX_AGE = 86400


@bp.before_request
def _start_timer() -> None:
    g.ui_started = time.perf_counter()


@bp.get("/")
def root() -> Response:
    return redirect("/ui/", code=303)


@bp.get("/ui/static/<path:filename>")
def static(filename: str) -> Response:
    response = send_from_directory(STATIC_DIR, filename, max_age=STATIC_MAX_AGE)
    response.headers["Cache-Control"] = f"public, max-age={STATIC_MAX_AGE}"
    return response


@bp.app_template_filter("duration_text")
def duration_text(execution: dict[str, Any]) -> str:
    """``1.25 s``, ``3 min 4 s``, ``2 h 5 min`` between an execution's start and finish."""
    try:
        seconds = (parse_time(execution["finished_at"]) - parse_time(execution["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return ""
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


@bp.app_context_processor
def _globals() -> dict[str, object]:
    return {"version": __version__}


# Importing the page modules registers their routes on ``bp``.
from dkron.api.ui import dashboard, editor, jobs, session  # noqa: E402

__all__ = ["bp", "dashboard", "editor", "jobs", "session"]
