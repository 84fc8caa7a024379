"""When a job really fires: its schedule, its time window and its jitter, as one function.

The scheduler, the job's ``next`` field and ``GET /v1/jobs/<name>/next`` all use
:func:`next_fire`, so what a user previews is what runs.

``jitter`` spreads a job's ticks: each tick ``t`` fires at ``t + offset`` where the offset is
derived from a hash of the job name and ``t`` (never a random draw), so every server computes
the same effective time and a new leader does not move a tick the old one planned. The offset is
below both the jitter and the gap to the following tick, so effective times keep their order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dkron.config import ConfigError, parse_duration
from dkron.jobs import parse_time
from dkron.schedule import Schedule, ScheduleError, parse_schedule

__all__ = ["Timing", "duration_ms", "next_fire", "stable_fraction", "timing_for"]


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) that depends only on ``parts`` (the same on every server)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def duration_ms(text: str | None, default: int = 0) -> int:
    """A job duration field ("30s", "1m30s", "500ms", plain seconds) in ms; "" gives ``default``."""
    if not text:
        return default
    try:
        return int(parse_duration(text) * 1000)
    except ConfigError:
        return default


@dataclass(frozen=True)
class Timing:
    """What decides a job's fire times (built once per job version)."""

    name: str
    schedule: Schedule
    starts_ms: int | None = None
    expires_ms: int | None = None
    jitter_ms: int = 0

    @property
    def one_shot(self) -> bool:
        return self.schedule.kind == "at"


def timing_for(job: dict[str, Any]) -> Timing | None:
    """The job's timing, or None when it never fires by itself (child, @manually, no schedule).

    Raises :class:`ScheduleError` for a schedule that does not parse."""
    if job.get("parent_job") or not job.get("schedule"):
        return None
    schedule = parse_schedule(job["schedule"], timezone=job.get("timezone", ""), job_name=job["name"])
    if schedule.kind == "manual":
        return None
    return Timing(
        name=job["name"],
        schedule=schedule,
        starts_ms=_ms(parse_time(job["starts_at"])) if job.get("starts_at") else None,
        expires_ms=_ms(parse_time(job["expires_at"])) if job.get("expires_at") else None,
        jitter_ms=duration_ms(job.get("jitter")),
    )


def _offset(timing: Timing, base_ms: int) -> int:
    if timing.jitter_ms <= 0:
        return 0
    span = timing.jitter_ms
    following = timing.schedule.next_after(_dt(base_ms))
    if following is not None:
        span = min(span, _ms(following) - base_ms)
    return int(stable_fraction(timing.name, base_ms) * span) if span > 1 else 0


def next_fire(timing: Timing, after_ms: int) -> int | None:
    """The job's next effective fire time (ms) strictly after ``after_ms``; None if never.

    Honours ``starts_at`` (ticks before it do not fire), ``expires_at`` (nor after it) and jitter.
    """
    # A tick t fires at t + offset with offset < jitter: ticks up to `jitter` before `after` may
    # still fire after it, so the search starts there.
    cursor = after_ms - timing.jitter_ms
    if timing.starts_ms is not None and cursor < timing.starts_ms:
        cursor = timing.starts_ms - 1
    for _ in range(10_000):  # bounded: at most jitter/interval ticks are skipped here
        base = timing.schedule.next_after(_dt(cursor))
        if base is None:
            return None
        base_ms = _ms(base)
        if timing.expires_ms is not None and base_ms > timing.expires_ms:
            return None
        fire = base_ms + _offset(timing, base_ms)
        if fire > after_ms:
            return fire
        cursor = base_ms
    return None


def preview(job: dict[str, Any], after_ms: int, n: int) -> list[int]:
    """The next ``n`` effective fire times of ``job`` after ``after_ms`` (fewer if it ends)."""
    try:
        timing = timing_for(job)
    except ScheduleError:
        return []
    out: list[int] = []
    cursor = after_ms
    while timing is not None and len(out) < n:
        fire = next_fire(timing, cursor)
        if fire is None:
            break
        out.append(fire)
        cursor = fire
    return out
