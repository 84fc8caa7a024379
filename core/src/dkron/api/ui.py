"""A minimal server-rendered UI until the full UI lands: jobs with status, next run and history."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, render_template

from dkron import __version__
from dkron.api.app import agent
from dkron.store.queries import JobQuery

bp = Blueprint("ui", __name__, template_folder="templates")


@bp.get("/")
def root() -> Response:
    return redirect("/ui/", code=303)


@bp.get("/ui/")
def home() -> str:
    node = agent()
    jobs, total = node.reader.list_jobs(JobQuery(end=100))
    return render_template(
        "home.html",
        node=node.node_name,
        version=__version__,
        leader=node.is_leader,
        jobs=jobs,
        total=total,
        counts=node.reader.counts(),
    )
