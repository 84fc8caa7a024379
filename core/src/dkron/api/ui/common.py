"""Helpers shared by the UI's page modules."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from flask import g, render_template, request

from dkron.api.app import agent


def is_fragment() -> bool:
    """htmx asks for a part of the page (``HX-Request``); the view renders only that part."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-Boosted") != "true"


def page(template: str, status: int = 200, **context: Any) -> tuple[str, int, dict[str, str]]:
    node = agent()
    html = render_template(
        template,
        node_name=node.node_name,
        is_leader=node.is_leader,
        path=request.path,
        **context,
    )
    # Pages show live state: never cached (the static files are). Server-Timing: the time spent
    # building the page (queries + template), shown by browsers' dev tools and read by bench_ui.
    spent_ms = (time.perf_counter() - g.get("ui_started", time.perf_counter())) * 1000
    return html, status, {"Cache-Control": "no-store", "Server-Timing": f"app;dur={spent_ms:.1f}"}


def not_found(message: str) -> tuple[str, int, dict[str, str]]:
    return page("error.html", 404, title="Not found", message=message)


def query_url(base: str, args: dict[str, Any], **changes: Any) -> str:
    merged = {**args, **changes}
    clean = {k: v for k, v in merged.items() if v not in (None, "")}
    return base + ("?" + urlencode(clean) if clean else "")
