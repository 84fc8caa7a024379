"""``/v1/schedule/preview`` (next run times of a schedule being typed) and ``/v1/executors``
(installed executors with their declared config fields): what a job editor needs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, request

from dkron.api.app import ApiError, agent, json_response
from dkron.api.jobs import _parse_int
from dkron.jobs import format_time
from dkron.schedule import ScheduleError, parse_schedule, validate_timezone

bp = Blueprint("preview", __name__)
MAX_PREVIEW = 50


def next_times(schedule: str, timezone: str, n: int, *, after: datetime | None = None) -> list[dict[str, str]]:
    """The next ``n`` fire times of ``schedule``: ``{"utc": ..., "local": ...}`` each, local in the
    schedule's zone (the server's UTC when none is given). Raises :class:`ScheduleError`."""
    zone = validate_timezone(timezone)
    parsed = parse_schedule(schedule, timezone=timezone)
    times = parsed.next_n(after or datetime.now(UTC), n)
    return [{"utc": format_time(t) or "", "local": t.astimezone(zone).isoformat()} for t in times]


@bp.get("/v1/schedule/preview")
def schedule_preview() -> Response:
    schedule = request.args.get("schedule", "").strip()
    timezone = request.args.get("timezone", "")
    n = _parse_int("n", 5)
    assert n is not None
    if not 1 <= n <= MAX_PREVIEW:
        raise ApiError(f"n must be between 1 and {MAX_PREVIEW}, got {n}", field="n")
    if not schedule:
        raise ApiError("schedule is required", field="schedule")
    try:
        validate_timezone(timezone)
    except ScheduleError as exc:
        raise ApiError(f"timezone: {exc}", field="timezone") from None
    try:
        items = next_times(schedule, timezone, n)
    except ScheduleError as exc:
        raise ApiError(f"can't parse job schedule: {exc}", field="schedule") from None
    return json_response({"schedule": schedule, "timezone": timezone, "next": items})


def executor_listing() -> list[dict[str, Any]]:
    registry = agent().plugins.executors
    return [
        {"name": name, "plugin": registry.owner(name), "config_schema": registry.schema(name)}
        for name in registry.names()
    ]


@bp.get("/v1/executors")
def executors() -> Response:
    items = executor_listing()
    return json_response(items, headers={"X-Total-Count": str(len(items))})
