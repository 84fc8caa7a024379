"""The web UI: server-rendered pages under ``/ui/`` (Jinja templates, htmx, a small script).

Pages read through the store's Reader (paged, sorted and filtered in SQL); every action (run,
enable/disable, delete, kill, create, edit) is a call from the browser to the ``/v1`` API, so
the API's authorization applies to it. Views are split by page: ``dashboard`` (dashboard, busy,
nodes, plugins), ``jobs`` (jobs list, job, execution), ``editor`` (create/edit), ``session``
(login/logout).
"""

from __future__ import annotations

import gzip
import mimetypes
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, request, send_from_directory

from dkron import __version__
from dkron.jobs import parse_time

bp = Blueprint("ui", __name__, template_folder="templates")
STATIC_DIR = Path(__file__).parent / "static"
#: Static URLs carry the version (``?v=``), so browsers may keep them for a day without going stale.
STATIC_MAX_AGE = 86400


#: Pages anyone may load, even when the API requires a token.
PUBLIC_PATHS = ("/ui/login", "/ui/logout", "/ui/static/")


@bp.before_request
def _start_and_authorize() -> Any:
    """Time the page; then, if the app has an authorizer for UI pages, ask it.

    The pages read the store directly (server-rendered), so when the API requires tokens they must
    be guarded like the API's reads. The auth layer plugs in as ``app.config["DKRON_UI_AUTHORIZE"]``:
    a callable taking the request and answering None (allowed) or ``(status, message)``. A refusal
    is shown as a page with a link to ``/ui/login``, not as JSON.
    """
    g.ui_started = time.perf_counter()
    authorize = current_app.config.get("DKRON_UI_AUTHORIZE")
    if authorize is None or request.path == "/" or request.path.startswith(PUBLIC_PATHS):
        return None
    denial = authorize(request)
    if denial is None:
        return None
    status, message = denial
    from dkron.api.ui.common import page

    return page("error.html", status, title="Log in needed", message=message, login=True)


@bp.get("/")
def root() -> Response:
    return redirect("/ui/", code=303)


@bp.get("/ui/static/<path:filename>")
def static(filename: str) -> Response:
    path = STATIC_DIR / filename
    if path.suffix in (".js", ".css") and path.parent == STATIC_DIR and path.is_file() and _accepts_gzip():
        response = Response(_gzipped(path), mimetype=mimetypes.guess_type(path.name)[0])
        response.headers["Content-Encoding"] = "gzip"
    else:
        response = send_from_directory(STATIC_DIR, filename, max_age=STATIC_MAX_AGE)
    response.headers["Cache-Control"] = f"public, max-age={STATIC_MAX_AGE}"
    response.headers["Vary"] = "Accept-Encoding"
    return response


def _accepts_gzip() -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


_gzip_cache: dict[Path, tuple[float, bytes]] = {}


def _gzipped(path: Path) -> bytes:
    """The file gzip-compressed, once per version of it (htmx: 51 kB -> 16 kB)."""
    mtime = path.stat().st_mtime
    cached = _gzip_cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = _gzip_cache[path] = (mtime, gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    return cached[1]


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
