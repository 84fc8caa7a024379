"""Job pages: the jobs table (paged, sorted and filtered in SQL), one job, one execution."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import request

from dkron.api.app import agent
from dkron.api.jobs import public
from dkron.api.preview import next_times
from dkron.api.ui import bp
from dkron.api.ui.common import is_fragment, not_found, page, query_url
from dkron.jobs import parse_time
from dkron.schedule import ScheduleError
from dkron.store.queries import JOB_SORTS, JOB_STATUSES, JobQuery, QueryError

Page = tuple[str, int, dict[str, str]]
PAGE_SIZES = (25, 50, 100)
EXECUTIONS_PER_PAGE = 20
PREVIEW_CHARS = 400  # output shown in the history table; the execution page has all of it


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name, "")
    return min(hi, max(lo, int(raw))) if raw.isdigit() and len(raw) < 10 else default


def _filters() -> dict[str, str]:
    args = request.args
    sort = args.get("sort", "name")
    return {
        "q": args.get("q", "").strip()[:200],
        "status": args.get("status", "") if args.get("status", "") in JOB_STATUSES else "",
        "enabled": args.get("enabled", "") if args.get("enabled", "") in ("yes", "no") else "",
        "tag": args.get("tag", "").strip()[:200],
        "executor": args.get("executor", "").strip()[:100],
        "sort": sort if sort in JOB_SORTS else "name",
        "order": "desc" if args.get("order", "").lower() == "desc" else "asc",
    }


@bp.get("/ui/jobs")
def jobs_page() -> Page:
    node = agent()
    filters = _filters()
    per = _int_arg("per", 50, 1, 100)
    per = per if per in PAGE_SIZES else 50
    number = _int_arg("page", 1, 1, 10**7)
    query = JobQuery(
        q=filters["q"],
        status=filters["status"],
        disabled={"yes": False, "no": True}.get(filters["enabled"]),
        tag=filters["tag"],
        executor=filters["executor"],
        sort=filters["sort"],
        order=filters["order"].upper(),
        start=(number - 1) * per,
        end=number * per,
    )
    error = ""
    try:
        jobs, total = node.reader.list_jobs(query)
    except QueryError as exc:
        jobs, total, error = [], 0, str(exc)
    pages = max(1, -(-total // per))
    args = {**filters, "per": per if per != 50 else ""}
    context = {
        "jobs": jobs,
        "total": total,
        "filters": filters,
        "per": per,
        "page_sizes": PAGE_SIZES,
        "number": number,
        "pages": pages,
        "error": error,
        "statuses": JOB_STATUSES,
        "executors": node.plugins.executors.names(),
        "url": lambda **changes: query_url("/ui/jobs", args, **changes),
        "sort_url": lambda col: query_url(
            "/ui/jobs", args, sort=col, order="desc" if filters["sort"] == col and filters["order"] == "asc" else "asc"
        ),
    }
    if is_fragment():
        return page("_jobs_table.html", **context)
    return page("jobs.html", title="Jobs", **context)


def upcoming(job: dict[str, Any], n: int = 10) -> tuple[list[dict[str, str]], str]:
    """The next ``n`` run times (UTC and the job's zone) and why there are none, if so."""
    if job["parent_job"]:
        return [], f"runs after its parent {job['parent_job']} succeeds"
    if not job["schedule"] or job["schedule"] in ("@manually",):
        return [], "runs only when started by hand"
    after = datetime.now(UTC)
    if job.get("starts_at"):
        after = max(after, parse_time(job["starts_at"]))
    try:
        times = next_times(job["schedule"], job["timezone"], n, after=after)
    except ScheduleError as exc:
        return [], str(exc)
    if job.get("expires_at"):
        expires = job["expires_at"]
        times = [t for t in times if parse_time(t["utc"]) <= parse_time(expires)]
    return times, "" if times else "no further runs"


@bp.get("/ui/jobs/<job_name>")
def job_page(job_name: str) -> Page:
    node = agent()
    job = node.reader.get_job(job_name)
    if job is None:
        return not_found(f"There is no job named {job_name!r}.")
    job = public(job)  # secret config values shown as ********
    number = _int_arg("page", 1, 1, 10**6)
    executions, total = node.reader.list_executions(
        job_name,
        start=(number - 1) * EXECUTIONS_PER_PAGE,
        end=number * EXECUTIONS_PER_PAGE,
        output_size_limit=PREVIEW_CHARS,
    )
    live = {e["id"]: e for e in node.busy() if e["job_name"] == job_name}
    for execution in executions:
        execution["live"] = execution["id"] in live
    # A run just started may be known to the runner before its record is committed.
    known = {e["id"] for e in executions}
    early = [
        {**e, "live": True, "attempt": e.get("attempt", 1), "output": ""}
        for e in live.values()
        if e["id"] not in known and number == 1
    ]
    context = {
        "job": public(job),
        "executions": early + executions,
        "total": total,
        "number": number,
        "pages": max(1, -(-total // EXECUTIONS_PER_PAGE)),
    }
    if is_fragment():
        return page("_executions.html", **context)
    times, why = upcoming(job)
    return page("job.html", title=job.get("displayname") or job_name, upcoming=times, no_runs=why, **context)


@bp.get("/ui/jobs/<job_name>/executions/<execution_id>")
def execution_page(job_name: str, execution_id: str) -> Page:
    node = agent()
    job = node.reader.get_job(job_name, with_children=False)
    if job is None:
        return not_found(f"There is no job named {job_name!r}.")
    execution = node.reader.get_execution(job_name, execution_id)
    live = next((e for e in node.busy() if e["id"] == execution_id and e["job_name"] == job_name), None)
    if execution is None and live is None:
        return not_found(f"Job {job_name} has no execution {execution_id!r} (it may have been trimmed).")
    if live is not None:
        execution = {**(execution or live), "status": "running", "output": live.get("output") or ""}
    return page("execution.html", title=f"{job_name} · execution", job=public(job), execution=execution)
