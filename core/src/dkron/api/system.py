"""Node and cluster endpoints: index, health, leader, members, busy, pause, leave, plugins, OpenAPI."""

from __future__ import annotations

import threading
from importlib import resources

import yaml
from flask import Blueprint, Response, request

from dkron import __version__
from dkron.api import auth
from dkron.api.app import ApiError, agent, json_response
from dkron.api.jobs import _parse_int, committed, store_errors

bp = Blueprint("system", __name__)
_spec_cache: dict[str, object] = {}


@bp.get("/health")
def health() -> Response:
    node = agent()
    leader = node.raft.leader_addr() if node.raft else None
    diverged = bool(node.raft and node.raft.diverged)
    status = "diverged" if diverged else "healthy" if leader else "unhealthy"
    body = {"status": status, "leader": leader, "node": node.node_name}
    if diverged:
        body["error"] = "this server's state database is behind its Raft snapshot; see its log"
    return json_response(body, 200 if leader and not diverged else 503)


RAFT_FIELDS = ("state", "leader", "has_quorum", "raft_term", "commit_idx", "last_applied", "log_len")


@bp.get("/v1")
@bp.get("/v1/")
def index() -> Response:
    node = agent()
    status = node.raft.status() if node.raft else {}
    raft = {key: status.get(key) for key in RAFT_FIELDS}
    raft["leader"] = str(raft["leader"]) if raft["leader"] is not None else None
    return json_response(
        {
            "agent": {"name": node.node_name, "version": __version__, "server": node.config["server"]},
            "tags": node.config["tag"],
            "raft": raft,
            "acl": (
                {"enabled": True}
                if auth.acl_enabled()
                else {
                    "enabled": False,
                    "warning": "ACLs are off: anyone who can reach this API can run commands on the cluster",
                }
            ),
            "scheduling_paused": node.scheduler.paused,
        }
    )


@bp.get("/v1/leader")
def leader() -> Response:
    node = agent()
    for member in node.members():
        if member["leader"]:
            return json_response(member)
    raise ApiError("no leader is elected right now", 503)


@bp.get("/v1/isleader")
def is_leader() -> Response:
    if agent().is_leader:
        return json_response("I am a leader")
    return json_response("I am a follower", 404)


@bp.get("/v1/members")
def members() -> Response:
    items = agent().members()
    return json_response(items, headers={"X-Total-Count": str(len(items))})


@bp.get("/v1/busy")
@store_errors
def busy() -> Response:
    limit = _parse_int("output_size_limit", None)
    items = sorted(agent().busy(), key=lambda e: e["started_at"] or "")
    if auth.caller().scoped:
        reader = agent().reader
        items = [
            e for e in items if (job := reader.get_job(e["job_name"], with_children=False)) and auth.visible([job])
        ]
    if limit is not None and limit >= 0:  # as on the executions list: keep the tail
        items = [
            {**e, "output": e["output"][len(e["output"]) - limit :] if limit else "", "output_truncated": True}
            if len(e.get("output") or "") > limit
            else e
            for e in items
        ]
    return json_response(items, headers={"X-Total-Count": str(len(items))})


def _pause_state() -> dict[str, bool]:
    node = agent()
    return {"paused": node.submissions_paused, "scheduling_paused": node.scheduler.paused}


@bp.get("/v1/pause")
def pause_status() -> Response:
    return json_response(_pause_state())


def _set_pause(paused: bool) -> Response:
    """Dkron's pause refuses new submissions on this node; ``?scheduling=true`` also stops
    scheduling cluster-wide, replicated so it survives restarts and leader changes."""
    node = agent()
    node.set_submissions_paused(paused)
    action = "pause" if paused else "unpause"
    if request.args.get("scheduling", "").lower() in ("1", "true"):
        entry = auth.audit_entry(f"cluster.{action}", "", {"scheduling": True, "node": node.node_name})
        committed("set_meta", {"key": "scheduling_paused", "value": paused, "_audit": entry})
    else:
        auth.audit(f"node.{action}", node.node_name, {"submissions": True})
    return json_response(_pause_state())


@bp.post("/v1/pause")
@store_errors
def pause() -> Response:
    return _set_pause(True)


@bp.post("/v1/unpause")
@store_errors
def unpause() -> Response:
    return _set_pause(False)


@bp.post("/v1/leave")
def leave() -> Response:
    node = agent()
    auth.audit("node.leave", node.node_name)
    # Answer first, then stop gracefully in the background (running executions may finish).
    # Not a daemon (it would inherit that from the HTTP worker thread): the process must not exit
    # before the graceful stop has finished.
    stopper = threading.Timer(0.2, node.stop)
    stopper.daemon = False
    stopper.start()
    return json_response({"leaving": node.node_name, "members": node.members()})


@bp.get("/v1/plugins")
def plugins() -> Response:
    return json_response(agent().plugins.listing())


def openapi_document() -> dict[str, object]:
    if "spec" not in _spec_cache:
        text = resources.files("dkron.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
        _spec_cache["spec"] = yaml.safe_load(text)
    return _spec_cache["spec"]  # type: ignore[return-value]


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    return json_response(openapi_document())
