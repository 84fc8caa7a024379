"""``/v1/acl``: bootstrap, tokens (create, list, get, revoke, self) and ``/v1/audit``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, request

from dkron.api import auth
from dkron.api.app import ApiError, agent, json_response, read_json
from dkron.api.jobs import _parse_int, committed, store_errors
from dkron.jobs import JobValidationError, format_time, parse_time
from dkron.store import acl as acl_store

bp = Blueprint("acl", __name__)
MAX_AUDIT_PAGE = 1000


def _shown(token: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    shown = {key: token.get(key) for key in ("accessor", "name", "role", "scope", "created_at", "created_by")}
    shown["revoked_at"] = token.get("revoked_at")
    if secret is not None:
        shown["secret"] = secret  # the only time it is ever shown
    return shown


@bp.post("/v1/acl/bootstrap")
@store_errors
def bootstrap() -> Response:
    """The first admin token; refused once done (whoever bootstraps first owns the cluster)."""
    record, secret = auth.new_token("bootstrap admin", "admin", {}, "bootstrap")
    entry = auth.audit_entry("acl.bootstrap", record["accessor"])
    committed("acl_bootstrap", {"token": record, "_audit": entry})
    return json_response(_shown(record, secret), 201)


@bp.get("/v1/acl/token/self")
def token_self() -> Response:
    who = auth.caller()
    return json_response(
        {
            "acl_enabled": auth.acl_enabled(),
            "accessor": who.accessor,
            "name": who.name,
            "role": who.role,
            "scope": who.scope,
        }
    )


@bp.get("/v1/acl/tokens")
@store_errors
def list_tokens() -> Response:
    tokens = [_shown(token) for token in acl_store.list_tokens(agent().reader.db)]
    return json_response(tokens, headers={"X-Total-Count": str(len(tokens))})


@bp.post("/v1/acl/tokens")
@store_errors
def create_token() -> Response:
    name, role, scope = auth.check_token_request(read_json())
    record, secret = auth.new_token(name, role, scope, auth.caller().accessor)
    entry = auth.audit_entry("acl.token.create", record["accessor"], {"name": name, "role": role, "scope": scope})
    committed("acl_token_create", {"token": record, "_audit": entry})
    return json_response(_shown(record, secret), 201, headers={"Location": f"/v1/acl/tokens/{record['accessor']}"})


def _load(accessor: str) -> dict[str, Any]:
    token = acl_store.token_by_accessor(agent().reader.db, accessor)
    if token is None:
        raise ApiError(f"token not found: {accessor}", 404)
    return token


@bp.get("/v1/acl/tokens/<accessor>")
@store_errors
def get_token(accessor: str) -> Response:
    return json_response(_shown(_load(accessor)))


@bp.delete("/v1/acl/tokens/<accessor>")
@store_errors
def revoke_token(accessor: str) -> Response:
    token = _load(accessor)
    now = format_time(datetime.now(UTC))
    entry = auth.audit_entry("acl.token.revoke", accessor, {"name": token["name"], "role": token["role"]})
    committed("acl_token_revoke", {"accessor": accessor, "now": now, "_audit": entry})
    return json_response(_shown(_load(accessor)))


def _time_arg(name: str) -> str:
    raw = request.args.get(name, "")
    if not raw:
        return ""
    try:
        return format_time(parse_time(raw))
    except (JobValidationError, ValueError, OverflowError):
        raise ApiError(f"{name} must be an RFC 3339 time such as 2026-01-02T15:04:05Z, got {raw[:40]!r}") from None


@bp.get("/v1/audit")
@store_errors
def list_audit() -> Response:
    start = _parse_int("_start", 0) or 0
    end = _parse_int("_end", None)
    if start < 0 or (end is not None and end < start):
        raise ApiError("_start must be >= 0 and _end >= _start")
    limit = min(MAX_AUDIT_PAGE, (end - start) if end is not None else 100)
    entries, total = acl_store.query_audit(
        agent().reader.db,
        action=request.args.get("action", ""),
        target=request.args.get("target", ""),
        actor=request.args.get("actor", ""),
        since=_time_arg("since"),
        until=_time_arg("until"),
        start=start,
        limit=limit,
    )
    return json_response(entries, headers={"X-Total-Count": str(total)})
