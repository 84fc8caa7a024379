"""``/v1/jobs``: list, create/update, get, delete, run, toggle, restore."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from flask import Blueprint, Response, request

from dkron.api import auth
from dkron.api.app import ApiError, agent, json_response, read_json
from dkron.cluster.node import ForwardError
from dkron.jobs import JobValidationError, format_time, parse_time, validate_job
from dkron.redact import PlaceholderError, diff_jobs, keep_stored_secrets, redact_job
from dkron.schedule import ScheduleError, validate_timezone
from dkron.scheduler import RunRefused
from dkron.store import followups
from dkron.store.queries import JobQuery, QueryError
from dkron.store.raft import StoreUnavailable
from dkron.timing import next_fire, preview, timing_for

bp = Blueprint("jobs", __name__)
MAX_QUERY_INT = 2**63 - 1


def public(job: dict[str, Any]) -> dict[str, Any]:
    """A job as users see it: no internal fields, secret config values redacted."""
    return redact_job({k: v for k, v in job.items() if not k.startswith("_")}, agent().plugins.executors)


def store_errors(handler: Callable[..., Response]) -> Callable[..., Response]:
    """Map store and query failures to clear HTTP answers."""

    @wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return handler(*args, **kwargs)
        except StoreUnavailable as exc:
            raise ApiError(f"the cluster could not commit the change: {exc}; retry", 503) from None
        except QueryError as exc:
            raise ApiError(str(exc), 400) from None

    return wrapper


def committed(command: str, payload: dict[str, Any]) -> Any:
    """Write through Raft; a refusal by the state machine becomes its HTTP error."""
    result = agent().write(command, payload)
    if isinstance(result, dict) and "error" in result:
        raise ApiError(result["error"], result.get("status", 400))
    return result


def load_job(name: str) -> dict[str, Any]:
    job = agent().reader.get_job(name)
    if job is None:
        raise ApiError(f"job not found: {name}", 404)
    return job


def next_run(job: dict[str, Any], now: datetime) -> str | None:
    """The time the job fires next, as the scheduler computes it (window, jitter; None if never)."""
    timing = None if job["disabled"] else timing_for(job)
    if timing is None:
        return None
    fire = next_fire(timing, int(now.timestamp() * 1000))
    return format_time(datetime.fromtimestamp(fire / 1000, UTC)) if fire is not None else None


def _parse_int(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise ApiError(f"{name} must be a whole number, got {raw[:30]!r}")
    value = int(raw) if len(raw) <= 20 else MAX_QUERY_INT + 1
    if abs(value) > MAX_QUERY_INT:  # SQLite integers are 64-bit: larger would be a 500
        shown = raw if len(raw) <= 30 else raw[:30] + "..."
        raise ApiError(f"{name} must be at most {MAX_QUERY_INT} in absolute value, got {shown}")
    return value


def _parse_order(default: str) -> str:
    raw = request.args.get("_order")
    if raw is None or raw == "":
        return default
    if raw.upper() not in ("ASC", "DESC"):
        raise ApiError(f"_order must be ASC or DESC, got {raw!r}")
    return raw.upper()


def _parse_bool(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() not in ("true", "false"):
        raise ApiError(f"{name} must be true or false, got {raw!r}")
    return raw.lower() == "true"


@bp.get("/v1/jobs")
@store_errors
def list_jobs() -> Response:
    metadata = {
        key[9:-1]: value for key, value in request.args.items() if key.startswith("metadata[") and key.endswith("]")
    }
    query = JobQuery(
        q=request.args.get("q", ""),
        status=request.args.get("status", ""),
        disabled=_parse_bool("disabled"),
        metadata=metadata,
        tag=request.args.get("tag", ""),
        executor=request.args.get("executor", ""),
        sort=request.args.get("_sort", "id") or "id",
        order=_parse_order("ASC"),
        start=_parse_int("_start", 0) or 0,
        end=_parse_int("_end", None),
    )
    if auth.caller().scoped:  # a team's token sees only its jobs: filter, then page
        start, end = query.start, query.end
        query.start, query.end = 0, None
        jobs = auth.visible(agent().reader.list_jobs(query)[0])
        total = len(jobs)
        jobs = jobs[start:end]
    else:
        jobs, total = agent().reader.list_jobs(query)
    return json_response([public(job) for job in jobs], headers={"X-Total-Count": str(total)})


def _save_job(payload: Any, path_name: str | None = None) -> Response:
    node = agent()
    if node.submissions_paused:
        raise ApiError("new job submissions are currently paused", 503)
    if path_name is not None and isinstance(payload, dict):
        payload.setdefault("name", path_name)
        if payload["name"] != path_name:
            raise ApiError(f"the job name in the body ({payload['name']!r}) differs from the URL ({path_name!r})")
    name = payload.get("name") if isinstance(payload, dict) else None
    existing = node.reader.get_job(name, with_children=False) if isinstance(name, str) and name else None
    try:
        keep_stored_secrets(payload, existing, node.plugins.executors)  # "********" keeps the stored secret
    except PlaceholderError as exc:
        raise ApiError(str(exc), field="executor_config") from None
    try:
        job = validate_job(payload, executors=node.plugins.executors, processors=node.plugins.processors)
    except JobValidationError as exc:
        raise ApiError(f"job validation failed: {exc}", exc.status, field=exc.field) from None
    now = datetime.now(UTC)
    reschedule = existing is None or any(
        existing.get(key) != job[key] for key in ("schedule", "timezone", "starts_at", "disabled")
    )
    shown = public(job)
    entry = (
        auth.audit_entry("job.create", job["name"], {"job": shown})
        if existing is None
        else auth.audit_entry("job.update", job["name"], {"changes": diff_jobs(public(existing), shown)})
    )
    committed(
        "put_job",
        {
            "job": job,
            "now": format_time(now),
            "next": next_run(job, now),
            "reset_schedule": reschedule,
            "_audit": entry,
        },
    )
    stored = load_job(job["name"])
    body = public(stored)
    if "runoncreate" in request.args:
        try:
            body.update(node.run_now(stored))
            auth.audit("job.run", job["name"], {"execution_id": body.get("execution_id"), "runoncreate": True})
        except RunRefused as exc:  # the job is saved; only the immediate run was refused
            raise ApiError(f"job {job['name']} was saved but not run: {exc}", 409) from None
    location = f"/v1/jobs/{job['name']}"
    return json_response(body, 201, headers={"Location": location})


@bp.route("/v1/jobs", methods=["POST", "PATCH"])
@store_errors
def create_or_update_job() -> Response:
    return _save_job(read_json())


@bp.put("/v1/jobs/<job_name>")
@store_errors
def put_job(job_name: str) -> Response:
    return _save_job(read_json(), job_name)


@bp.get("/v1/jobs/<job_name>")
@store_errors
def get_job(job_name: str) -> Response:
    return json_response(public(load_job(job_name)))


@bp.delete("/v1/jobs/<job_name>")
@store_errors
def delete_job(job_name: str) -> Response:
    job = load_job(job_name)
    committed("delete_job", {"name": job_name, "_audit": auth.audit_entry("job.delete", job_name)})
    return json_response(public(job))


@bp.post("/v1/jobs/<job_name>")
@bp.post("/v1/jobs/<job_name>/run")
@store_errors
def run_job(job_name: str) -> Response:
    node = agent()
    job = load_job(job_name)
    force = _force_requested()
    try:
        started = node.run_now(job, force=force)  # on a follower, forwarded to the leader
    except RunRefused as exc:
        raise ApiError(str(exc), 409) from None
    except ForwardError as exc:
        raise ApiError(str(exc), exc.status) from None
    # The launch is committed and queued, but its execution record is committed a few ms later (by
    # the runner, through the recorder's batches). Wait briefly for it, so that the Location answered
    # below resolves at once instead of a 404.
    execution_id = started["execution_id"]
    auth.audit("job.run", job_name, {"execution_id": execution_id})
    deadline = time.monotonic() + 1.0
    while node.reader.get_execution(job_name, execution_id) is None and time.monotonic() < deadline:
        time.sleep(0.005)
    body = {**public(job), **started}
    return json_response(body, 202, headers={"Location": f"/v1/jobs/{job_name}/executions/{execution_id}"})


def _force_requested() -> bool:
    """``?force=true`` or a JSON body ``{"force": true}``: run whatever the concurrency policy."""
    force = _parse_bool("force")
    raw = request.get_data(cache=True)
    if raw.strip() and request.mimetype == "application/json":
        body = read_json()
        if not isinstance(body, dict) or not isinstance(body.get("force", False), bool):
            raise ApiError('the run request body must be a JSON object such as {"force": true}')
        force = force or body.get("force", False)
    return bool(force)


MAX_PREVIEW = 100


@bp.get("/v1/jobs/<job_name>/next")
@store_errors
def next_runs(job_name: str) -> Response:
    """The job's next effective run times (schedule, starts_at/expires_at and jitter applied), in
    UTC and in the job's zone. A disabled job shows the times it would run at once enabled."""
    job = load_job(job_name)
    n = _parse_int("n", 10)
    if n is None or not 1 <= n <= MAX_PREVIEW:
        raise ApiError(f"n must be between 1 and {MAX_PREVIEW}, got {n}")
    try:
        timing = timing_for(job)
    except ScheduleError as exc:
        raise ApiError(f"the job's schedule does not parse: {exc}", 409) from None
    zone = timing.schedule.tz if timing else validate_timezone(job.get("timezone", ""))
    now = int(time.time() * 1000)
    times = preview(job, now, n)

    def when(ms: int) -> dict[str, Any]:
        instant = datetime.fromtimestamp(ms / 1000, UTC)
        return {"utc": format_time(instant), "local": instant.astimezone(zone).isoformat(timespec="milliseconds")}

    body = {
        "job": job_name,
        "timezone": zone.key,
        "disabled": job["disabled"],
        "jitter": job.get("jitter") or "",
        "next": [when(ms) for ms in times],
        # Committed retries and dependent runs waiting for their time (they survive a leader change).
        "pending": [
            {"kind": row["kind"], "run_id": row["run_id"], "attempt": row["attempt"], **when(row["not_before_ms"])}
            for row in followups.pending_for_job(agent().reader.db, job_name)
        ],
    }
    if job.get("parent_job"):
        wanted = job.get("depends_on_status") or "success"
        body["note"] = f"runs after its parent job {job['parent_job']} (depends_on_status: {wanted})"
    return json_response(body)


@bp.post("/v1/jobs/<job_name>/toggle")
@store_errors
def toggle_job(job_name: str) -> Response:
    job = load_job(job_name)
    disabled = not job["disabled"]
    now = datetime.now(UTC)
    nxt = next_run({**job, "disabled": disabled}, now)
    entry = auth.audit_entry("job.toggle", job_name, {"disabled": disabled})
    committed(
        "set_disabled", {"name": job_name, "disabled": disabled, "now": format_time(now), "next": nxt, "_audit": entry}
    )
    return json_response(public(load_job(job_name)), headers={"Location": f"/v1/jobs/{job_name}"})


def _restore_payload() -> Any:
    upload = request.files.get("file")
    if upload is not None:
        upload.stream.seek(0)  # read twice: by the access check of a scoped token, then here
        try:
            return json.loads(upload.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(f"the uploaded file is not valid JSON: {exc}") from None
    if request.mimetype == "multipart/form-data":
        raise ApiError("multipart upload must carry the backup in a form field named 'file'")
    return read_json()


@bp.post("/v1/restore")
@store_errors
def restore() -> Response:
    """Restore Dkron's backup (the array from GET /v1/jobs): validate all, then write parents first."""
    node = agent()
    payload = _restore_payload()
    if not isinstance(payload, list):
        raise ApiError("a backup is a JSON array of jobs, as returned by GET /v1/jobs")
    jobs: dict[str, dict[str, Any]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(payload):
        stored = (
            node.reader.get_job(item["name"]) if isinstance(item, dict) and isinstance(item.get("name"), str) else None
        )
        try:
            keep_stored_secrets(item, stored, node.plugins.executors)
        except PlaceholderError as exc:
            raise ApiError(f"job #{index}: {exc}", field="executor_config") from None
        try:
            job = validate_job(item, executors=node.plugins.executors, processors=node.plugins.processors)
        except JobValidationError as exc:
            raise ApiError(f"job #{index}: {exc}", 400, field=exc.field) from None
        if job["name"] in jobs:
            raise ApiError(f"job #{index}: {job['name']!r} appears twice in the backup")
        jobs[job["name"]] = job
        by_name[job["name"]] = item
    for job in jobs.values():
        parent = job["parent_job"]
        if parent and parent not in jobs and node.reader.get_job(parent) is None:
            raise ApiError(f"job {job['name']!r}: parent job {parent!r} is neither in the backup nor stored")
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str, trail: tuple[str, ...] = ()) -> None:
        if name in placed:
            return
        if name in trail:
            raise ApiError(f"dependency cycle in the backup: {' -> '.join((*trail, name))}")
        parent = jobs[name]["parent_job"]
        if parent in jobs:
            place(parent, (*trail, name))
        placed.add(name)
        order.append(name)

    for name in jobs:
        place(name)
    now = datetime.now(UTC)
    # One command for the whole backup: the state machine applies it in one transaction, so a
    # refusal of any job (or a failed commit) leaves nothing of it stored.
    entries = [
        {"job": jobs[name], "next": next_run(jobs[name], now), "counters": _backup_counters(by_name[name])}
        for name in order
    ]
    audit = auth.audit_entry("job.restore", ",".join(order)[:200], {"jobs": list(order)})
    result = committed("restore_jobs", {"jobs": entries, "now": format_time(now), "_audit": audit})
    return json_response({"restored": len(entries), "jobs": result["jobs"]})


def _backup_counters(item: dict[str, Any]) -> dict[str, Any]:
    """The history a Dkron backup carries (counters, last_* times, status), checked, for a max-merge."""
    counters: dict[str, Any] = {}
    for key in ("success_count", "error_count", "skipped_count", "missed_count"):
        value = item.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_QUERY_INT:
            counters[key] = value
    for key in ("last_success", "last_error"):
        value = item.get(key)
        if isinstance(value, str) and value and not value.startswith("0001-"):
            try:
                counters[key] = format_time(parse_time(value))
            except ValueError:
                raise ApiError(f"job {item.get('name')!r}: {key} is not a time: {value[:40]!r}", field=key) from None
    if item.get("status") in ("success", "failed"):
        counters["status"] = item["status"]
    return counters
