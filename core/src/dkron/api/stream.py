"""``/v1/jobs/<job>/executions/<id>/stream``: a running execution's output as Server-Sent Events.

Works on any server: ``Agent.busy()`` returns the leader's live output tails (a follower asks the
leader over gRPC), and a finished execution is read from the replicated store. Each stream holds
one HTTP worker thread, so streams are capped (a client over the cap gets a 503 and polls the
execution instead) and bounded in time (``max_seconds``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response

from dkron.api.app import ApiError, agent, json_response
from dkron.api.jobs import _parse_int, load_job, store_errors

bp = Blueprint("stream", __name__)

MAX_STREAMS = 6  # of the HTTP server's 16 threads: the API must stay responsive
DEFAULT_SECONDS = 600
MAX_SECONDS = 3600
POLL_SECONDS = 0.4
# A write is also how a departed client is noticed (waitress then closes the stream and its slot
# is freed, about three keep-alives after it left), so they come often; waitress times out at 60 s.
KEEPALIVE_SECONDS = 2.0
START_GRACE_SECONDS = 5.0  # a just-launched execution may not be visible anywhere yet
_streams = threading.BoundedSemaphore(MAX_STREAMS)


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _output_delta(previous: str, current: str) -> dict[str, str] | None:
    """What the client must do to go from ``previous`` to ``current``: append, or replace (the
    live tail is bounded, so once it is full its start moves and appending is not possible)."""
    if current == previous:
        return None
    if current.startswith(previous):
        return {"append": current[len(previous) :]}
    return {"replace": current}


class _Released:
    """The event iterator; ``close()`` (called by the WSGI server, even if iteration never began)
    frees the stream's slot exactly once."""

    def __init__(self, events: Iterator[str]) -> None:
        self._events = events
        self._open = True

    def __iter__(self) -> _Released:
        return self

    def __next__(self) -> str:
        return next(self._events)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._events.close()
            _streams.release()


@bp.get("/v1/jobs/<job_name>/executions/<execution_id>/stream")
@store_errors
def stream_execution(job_name: str, execution_id: str) -> Response:
    load_job(job_name)
    node = agent()
    max_seconds = _parse_int("max_seconds", DEFAULT_SECONDS)
    assert max_seconds is not None
    if not 1 <= max_seconds <= MAX_SECONDS:
        raise ApiError(f"max_seconds must be between 1 and {MAX_SECONDS}, got {max_seconds}")
    if not _streams.acquire(blocking=False):
        return json_response(
            {"error": f"too many live output streams on this server (at most {MAX_STREAMS}); poll the execution"},
            503,
            headers={"Retry-After": "5"},
        )

    def live() -> dict[str, Any] | None:
        return next((e for e in node.busy() if e["id"] == execution_id and e["job_name"] == job_name), None)

    def events() -> Iterator[str]:
        sent = ""
        started = time.monotonic()
        last_write = started
        yield "retry: 3000\n\n"
        while True:
            running = live()
            if running is not None:
                delta = _output_delta(sent, running.get("output") or "")
                if delta is not None:
                    sent = running.get("output") or ""
                    last_write = time.monotonic()
                    yield _event("output", delta)
            else:
                stored = node.reader.get_execution(job_name, execution_id)
                if stored is not None and stored["status"] != "running":
                    delta = _output_delta(sent, stored["output"] or "")
                    if delta is not None:
                        yield _event("output", delta)
                    yield _event("done", {k: v for k, v in stored.items() if k != "output"})
                    return
                if stored is None and time.monotonic() - started > START_GRACE_SECONDS:
                    yield _event("gone", {"error": f"execution not found: {execution_id} of job {job_name}"})
                    return
            if time.monotonic() - started > max_seconds:
                yield _event("timeout", {"error": f"stream closed after {max_seconds}s; reconnect to continue"})
                return
            if time.monotonic() - last_write > KEEPALIVE_SECONDS:
                last_write = time.monotonic()
                yield ": keep-alive\n\n"
            time.sleep(POLL_SECONDS)

    return Response(
        _Released(events()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
