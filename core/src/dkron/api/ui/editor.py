"""The job editor (create / edit): a form built from the executors' declared config fields,
plus a raw JSON editor. Saving is a call from the browser to ``/v1/jobs`` (see static/app.js)."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from dkron.api.app import agent
from dkron.api.jobs import public
from dkron.api.preview import executor_listing
from dkron.api.ui import bp
from dkron.api.ui.common import not_found, page
from dkron.jobs import CATCHUP_POLICIES, COMPUTED_FIELDS, CONCURRENCY_POLICIES

Page = tuple[str, int, dict[str, str]]

NEW_JOB: dict[str, Any] = {
    "name": "",
    "displayname": "",
    "schedule": "@every 1m",
    "timezone": "",
    "executor": "shell",
    "executor_config": {},
    "disabled": False,
    "concurrency": "allow",
    "catchup": "latest",
    "retries": 0,
    "parent_job": "",
    "owner": "",
    "owner_email": "",
    "tags": {},
    "metadata": {},
    "processors": {},
    "ephemeral": False,
    "starts_at": None,
    "expires_at": None,
}


def _editable(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in public(job).items() if k not in COMPUTED_FIELDS}


def _editor(job: dict[str, Any], mode: str) -> Page:
    executors = executor_listing()
    if job["executor"] and job["executor"] not in {e["name"] for e in executors}:
        executors.append({"name": job["executor"], "plugin": "", "config_schema": None, "missing": True})
    return page(
        "editor.html",
        title="New job" if mode == "new" else f"Edit {job['name']}",
        mode=mode,
        job=job,
        job_json=json.dumps(job, indent=2, ensure_ascii=False),
        executors=executors,
        concurrency=CONCURRENCY_POLICIES,
        catchup=CATCHUP_POLICIES,
        lines=lambda mapping: "\n".join(f"{k}={v}" for k, v in (mapping or {}).items()),
    )


@bp.get("/ui/jobs/new")
def new_job() -> Page:
    job = dict(NEW_JOB)
    copy = request.args.get("copy")
    if copy:
        source = agent().reader.get_job(copy, with_children=False)
        if source is None:
            return not_found(f"There is no job named {copy!r} to copy.")
        job = {**_editable(public(source)), "name": f"{copy}-copy"}
    return _editor(job, "new")


@bp.get("/ui/jobs/<job_name>/edit")
def edit_job(job_name: str) -> Page:
    job = agent().reader.get_job(job_name, with_children=False)
    if job is None:
        return not_found(f"There is no job named {job_name!r}.")
    # Secrets stay ********; saving sends the placeholder back and the server keeps the stored value.
    return _editor({**NEW_JOB, **_editable(public(job))}, "edit")
