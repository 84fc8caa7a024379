"""``/v1/jobs/<job>/executions``: history (paged in the store), one execution, delete, kill."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, request

from dkron.api import auth
from dkron.api.app import ApiError, agent, json_response
from dkron.api.jobs import _parse_int, _parse_order, committed, load_job, public, store_errors

bp = Blueprint("executions", __name__)


def _with_live_output(execution: dict[str, Any]) -> dict[str, Any]:
    """A running execution's output comes from the runner's live tail, not the stored record."""
    if execution["status"] != "running":
        return execution
    for live in agent().busy():
        if live["id"] == execution["id"] and live["job_name"] == execution["job_name"]:
            return {**execution, "output": live["output"]}
    return execution


@bp.get("/v1/jobs/<job_name>/executions")
@store_errors
def list_executions(job_name: str) -> Response:
    load_job(job_name)
    limit = _parse_int("output_size_limit", None)
    rows, total = agent().reader.list_executions(
        job_name,
        sort=request.args.get("_sort", "id") or "id",
        order=_parse_order("DESC"),
        start=_parse_int("_start", 0) or 0,
        end=_parse_int("_end", None),
        output_size_limit=limit,
    )
    return json_response(rows, headers={"X-Total-Count": str(total)})


@bp.delete("/v1/jobs/<job_name>/executions")
@store_errors
def delete_executions(job_name: str) -> Response:
    load_job(job_name)
    committed("delete_executions", {"name": job_name, "_audit": auth.audit_entry("executions.delete", job_name)})
    return json_response(public(load_job(job_name)))


@bp.get("/v1/jobs/<job_name>/executions/<execution_id>")
@store_errors
def get_execution(job_name: str, execution_id: str) -> Response:
    load_job(job_name)
    execution = agent().reader.get_execution(job_name, execution_id)
    if execution is None:
        # Just started: its record may not be committed yet, but the runner already has it.
        execution = next((e for e in agent().busy() if e["id"] == execution_id and e["job_name"] == job_name), None)
    if execution is None:
        raise ApiError(f"execution not found: {execution_id} of job {job_name}", 404)
    return json_response(_with_live_output(execution))


@bp.post("/v1/jobs/<job_name>/executions/<execution_id>/kill")
@store_errors
def kill_execution(job_name: str, execution_id: str) -> Response:
    load_job(job_name)
    node = agent()
    running = next((e for e in node.busy() if e["id"] == execution_id and e["job_name"] == job_name), None)
    if running is not None and running.get("run_id"):
        # Killed on purpose: the state machine must not retry this attempt.
        run = {"run_id": running["run_id"], "attempt": running.get("attempt") or 1}
        committed("mark_runs", {"runs": [run], "now_ms": int(time.time() * 1000)})
    if running is None or not node.kill(job_name, execution_id, "killed through the API"):
        raise ApiError(f"execution {execution_id} of job {job_name} is not running", 404)
    auth.audit("execution.kill", job_name, {"execution_id": execution_id})
    return json_response({"killed": True, "id": execution_id, "job_name": job_name}, 202)
