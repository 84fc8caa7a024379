"""Who may call what: API tokens, roles, per-team job scopes and the policy of every endpoint.

Every request is checked before its view runs (:func:`authorize`, a ``before_request`` hook),
against :data:`POLICIES`, which names the role each endpoint needs and how its job scope is
found. An endpoint missing from the table is refused (fail closed); ``tests/test_acl.py`` walks
``app.url_map`` so a new route without a policy fails the suite.

The token is checked on the server that receives the request, against its own replica of the
token table (tokens are replicated through Raft, so every server knows them and a revocation
reaches all of them with the next commit). Work that this server then forwards to the leader
(manual runs over gRPC, writes through Raft) travels between cluster members authenticated by
the cluster's mutual TLS, never on the caller's say-so: the gRPC and Raft ports are not an API
a token holder can reach (see docs/security.md).
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, current_app, g, redirect, request, url_for

from dkron.api.app import ApiError, agent, read_json
from dkron.jobs import format_time
from dkron.store import acl as acl_store

log = logging.getLogger(__name__)

ROLES = ("read", "run", "write", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES, start=1)}
TOKEN_PREFIX = "dkr_"
COOKIE = "dkron_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Policy:
    """``role``: the least role allowed (None = public). ``scope`` says how job scope applies:

    * ``"cluster"``: not about one job. Scoped tokens may read, but changes (pause, leave, ...)
      need a token without a scope: a team's token must not act on the whole cluster.
    * ``"job"``: the job named by the ``<job_name>`` URL part must be in scope.
    * ``"body"``: every job in the request body (one object or a backup array) must be in scope,
      and so must the stored jobs of the same names (no taking over another team's job).
    * ``"job+body"``: both (``PUT /v1/jobs/<job_name>``).
    * ``"filtered"``: a list; the view shows a scoped token only the jobs in its scope.
    """

    role: str | None
    scope: str = "cluster"


PUBLIC = Policy(None)
POLICIES: dict[str, Policy] = {
    # system
    "system.health": PUBLIC,
    "system.openapi": PUBLIC,
    "system.index": Policy("read"),
    "system.leader": Policy("read"),
    "system.is_leader": Policy("read"),
    "system.members": Policy("read"),
    "system.busy": Policy("read", "filtered"),
    "system.pause_status": Policy("read"),
    "system.pause": Policy("write"),
    "system.unpause": Policy("write"),
    "system.leave": Policy("admin"),
    "system.plugins": Policy("read"),
    # jobs
    "jobs.list_jobs": Policy("read", "filtered"),
    "jobs.create_or_update_job": Policy("write", "body"),
    "jobs.put_job": Policy("write", "job+body"),
    "jobs.get_job": Policy("read", "job"),
    "jobs.delete_job": Policy("write", "job"),
    "jobs.run_job": Policy("run", "job"),
    "jobs.toggle_job": Policy("write", "job"),
    "jobs.restore": Policy("write", "body"),
    "jobs.next_runs": Policy("read", "job"),
    "preview.schedule_preview": Policy("read"),
    "preview.executors": Policy("read"),
    "stream.stream_execution": Policy("read", "job"),
    # Prometheus scrapes with a bearer token like any client; series are labelled by job name only.
    "metrics.metrics": Policy("read"),
    # executions
    "executions.list_executions": Policy("read", "job"),
    "executions.delete_executions": Policy("write", "job"),
    "executions.get_execution": Policy("read", "job"),
    "executions.kill_execution": Policy("run", "job"),
    # tokens and audit
    "acl.bootstrap": PUBLIC,  # refused by the state machine once done
    "acl.token_self": Policy("read"),
    "acl.list_tokens": Policy("admin"),
    "acl.create_token": Policy("admin"),
    "acl.get_token": Policy("admin"),
    "acl.revoke_token": Policy("admin"),
    "acl.list_audit": Policy("admin"),
}
#: Blueprints whose routes are still being written by others: their pages (GET) need ``read``,
#: the login page and static files are public. Only pages: a UI route that changes something
#: (POST, PUT, ...) must be listed in POLICIES with its role, or it is refused. Any other
#: blueprint must list each endpoint above.
BLUEPRINT_DEFAULTS: dict[str, Policy] = {"ui": Policy("read")}
PUBLIC_SUFFIXES = ("static", "login", "logout")


def policy_for(endpoint: str | None, method: str = "GET") -> Policy | None:
    """The policy of ``endpoint`` for ``method``, or None if it has none (then it is refused)."""
    if endpoint is None:
        return None
    if endpoint in POLICIES:
        return POLICIES[endpoint]
    blueprint, _, view = endpoint.rpartition(".")
    if endpoint == "static" or (blueprint in BLUEPRINT_DEFAULTS and view.startswith(PUBLIC_SUFFIXES)):
        return PUBLIC
    if method.upper() not in SAFE_METHODS:
        return None
    return BLUEPRINT_DEFAULTS.get(blueprint)


# -- tokens ----------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    # SHA-256 without salt or stretching is enough: the secret is 256 random bits (see store/acl.py).
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_token(name: str, role: str, scope: dict[str, Any], created_by: str) -> tuple[dict[str, Any], str]:
    """A token record for the store and its secret (shown once, never stored)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = {
        "accessor": str(uuid.uuid4()),
        "secret_hash": hash_secret(secret),
        "name": name,
        "role": role,
        "scope": scope,
        "created_at": format_time(datetime.now(UTC)),
        "created_by": created_by,
    }
    return record, secret


def check_token_request(body: Any) -> tuple[str, str, dict[str, Any]]:
    """Validate ``{"name", "role", "scope": {"jobs": glob, "metadata": {k: v}}}``."""
    if not isinstance(body, dict):
        raise ApiError("send a JSON object: {name, role, scope}")
    unknown = sorted(set(body) - {"name", "role", "scope"})
    if unknown:
        raise ApiError(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > 200:
        raise ApiError("name must be a string of at most 200 characters", field="name")
    role = body.get("role")
    if role not in ROLES:
        raise ApiError(f"role must be one of {', '.join(ROLES)}", field="role")
    scope = body.get("scope") or {}
    if not isinstance(scope, dict) or set(scope) - {"jobs", "metadata"}:
        raise ApiError('scope must be an object with "jobs" (a name glob) and/or "metadata" (key: value)')
    jobs = scope.get("jobs", "")
    if not isinstance(jobs, str) or len(jobs) > 200:
        raise ApiError("scope.jobs must be a job name glob such as team-a-*", field="scope")
    metadata = scope.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ApiError("scope.metadata must map metadata keys to string values", field="scope")
    clean = {k: v for k, v in (("jobs", jobs), ("metadata", metadata)) if v}
    if clean and role == "admin":
        raise ApiError("an admin token manages the whole cluster and cannot be scoped", field="scope")
    return name, role, clean


@dataclass(frozen=True)
class Caller:
    accessor: str
    name: str
    role: str
    scope: dict[str, Any]

    @property
    def scoped(self) -> bool:
        return bool(self.scope)

    def allows(self, job: dict[str, Any]) -> bool:
        """Is ``job`` (stored or submitted) inside this caller's scope?"""
        pattern = self.scope.get("jobs")
        if pattern and not fnmatch.fnmatchcase(str(job.get("name", "")), pattern):
            return False
        metadata = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
        return all(metadata.get(k) == v for k, v in (self.scope.get("metadata") or {}).items())

    def name_allowed(self, name: str) -> bool:
        pattern = self.scope.get("jobs")
        return not pattern or fnmatch.fnmatchcase(name, pattern)


ANONYMOUS = Caller("anonymous", "anonymous (ACLs off)", "admin", {})


def caller() -> Caller:
    return getattr(g, "dkron_caller", ANONYMOUS)


def acl_enabled() -> bool:
    return bool(getattr(agent(), "config", {}).get("acl-enabled"))


def _presented_token() -> tuple[str | None, str]:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError("Authorization must be 'Bearer <token>'", 401)
        return value.strip(), "header"
    if request.headers.get("X-Dkron-Token"):
        return request.headers["X-Dkron-Token"].strip(), "header"
    if request.cookies.get(COOKIE):
        return request.cookies[COOKIE], "cookie"
    return None, ""


def _check_origin() -> None:
    """A browser sends the cookie with cross-site requests too: a change authorised by the
    cookie alone must come from this server's own pages (no cross-site request forgery)."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site", "")
    if fetch_site == "cross-site" or (origin and origin.rstrip("/") != request.host_url.rstrip("/")):
        raise ApiError("cross-site request refused: send the token in a header for API calls", 403)


def token_caller(secret: str) -> Caller | None:
    """The valid (known, not revoked) token ``secret`` as a :class:`Caller`, else None.

    For the UI's login page: check the token, then set it as the ``dkron_token`` cookie with
    ``HttpOnly``, ``SameSite=Strict`` and, over HTTPS, ``Secure``."""
    record = acl_store.token_by_hash(agent().reader.db, hash_secret(secret))
    if record is None or record["revoked_at"]:
        return None
    return Caller(record["accessor"], record["name"], record["role"], record["scope"] or {})


def authenticate() -> Caller:
    secret, source = _presented_token()
    if secret is None:
        raise ApiError("ACLs are on: send a token (Authorization: Bearer <token> or X-Dkron-Token)", 401)
    record = acl_store.token_by_hash(agent().reader.db, hash_secret(secret))
    # Looked up by hash: the secret itself is never compared, so there is no timing to measure.
    if record is None:
        raise ApiError("the token is not valid", 401)
    if record["revoked_at"]:
        raise ApiError("the token was revoked", 401)
    if source == "cookie":
        _check_origin()
    return Caller(record["accessor"], record["name"], record["role"], record["scope"] or {})


def _login_redirect(exc: ApiError) -> Response | None:
    """A browser (``Accept: text/html``) on a UI page without a valid token is sent to the UI's
    login page, when there is one; other clients get the JSON 401."""
    endpoint = request.endpoint or ""
    if exc.status != 401 or not endpoint.startswith("ui.") or "ui.login" not in current_app.view_functions:
        return None
    if "text/html" not in request.headers.get("Accept", ""):
        return None
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("ui.login", next=target), code=303)


def authorize() -> Response | None:
    """``before_request``: refuse what the caller may not do (401/403 with a JSON body)."""
    if request.method == "OPTIONS":  # CORS preflight / Flask's automatic OPTIONS: runs no view
        return None
    policy = policy_for(request.endpoint, request.method)
    if request.endpoint is None:
        return None  # no route: Flask answers 404/405 itself
    if policy is None:
        log.error("no access policy for endpoint %s: refused", request.endpoint)
        raise ApiError(f"no access policy for {request.endpoint}; refused", 403)
    if policy.role is None or not acl_enabled():
        return None
    try:
        who = authenticate()
    except ApiError as exc:
        login = _login_redirect(exc)
        if login is not None:
            return login  # a browser on a UI page goes to the login page
        _log_refusal(exc, "-")
        raise
    g.dkron_caller = who
    try:
        if RANK[who.role] < RANK[policy.role]:
            raise ApiError(f"this needs a {policy.role} token; yours is {who.role}", 403)
        if who.scoped:
            _check_scope(who, policy)
    except ApiError as exc:
        _log_refusal(exc, f"{who.name or who.accessor} ({who.accessor})")
        raise
    return None


def _log_refusal(exc: ApiError, who: str) -> None:
    # Refusals are not changes (not in the audit log) but an operator wants to see them.
    if exc.status in (401, 403):
        log.warning("refused %s %s from %s, token %s: %s", request.method, request.path, request.remote_addr, who, exc)


def _check_scope(who: Caller, policy: Policy) -> None:
    scope = policy.scope
    if scope == "cluster" and RANK[policy.role or "read"] > RANK["read"]:
        raise ApiError("a scoped token cannot change the whole cluster; use an unscoped token", 403)
    if scope in ("job", "job+body"):
        name = (request.view_args or {}).get("job_name", "")
        _check_job_name(who, name)
    if scope in ("body", "job+body"):
        from dkron.api.jobs import _restore_payload

        # The same parsing as the view (a restore may be a multipart upload): a body this check
        # cannot read is refused here rather than passed on unchecked.
        body = _restore_payload() if request.endpoint == "jobs.restore" else read_json()
        items = body if isinstance(body, list) else [body]
        for item in items:
            if not isinstance(item, dict):
                continue  # validation refuses it
            if scope == "job+body":
                item = {"name": (request.view_args or {}).get("job_name", ""), **item}
            if not who.allows(item):
                raise ApiError(f"job {item.get('name')!r} is outside the scope of this token", 403)
            _check_job_name(who, str(item.get("name", "")))


def _check_job_name(who: Caller, name: str) -> None:
    if not who.name_allowed(name):
        raise ApiError(f"job {name!r} is outside the scope of this token", 403)
    stored = agent().reader.get_job(name, with_children=False) if name else None
    if stored is not None and not who.allows(stored):
        raise ApiError(f"job {name!r} is outside the scope of this token", 403)


def visible(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs of ``jobs`` that the caller may see."""
    who = caller()
    return [job for job in jobs if not who.scoped or who.allows(job)]


def warn_if_unprotected(node: Any) -> None:
    """At start: ACLs were bootstrapped in this cluster, yet this server runs without them."""
    if not node.config.get("acl-enabled") and acl_store.bootstrapped(node.reader.db):
        log.error(
            "ACL tokens exist in this cluster (bootstrapped) but this server runs without --acl-enabled: "
            "it answers everyone; start it with --acl-enabled like the others"
        )


# -- audit -----------------------------------------------------------------------------------


def audit_entry(action: str, target: str = "", details: dict[str, Any] | None = None) -> dict[str, Any]:
    """One audit entry by the current caller; attach it to a command as ``_audit`` or send it
    with :func:`audit`. Retention travels in the entry so every server trims the same rows."""
    node = agent()
    who = caller()
    now = datetime.now(UTC)
    entry: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "time": format_time(now),
        "actor": who.accessor,
        "actor_name": who.name,
        "remote_addr": request.remote_addr or "",
        "node": node.node_name,
        "action": action,
        "target": target,
        "details": details or {},
        "keep_count": node.config.get("audit-retention-count", 0),
    }
    age = node.config.get("audit-retention-age-seconds", 0.0)
    if age:
        entry["keep_since"] = format_time(now - timedelta(seconds=age))
    return entry


def audit(action: str, target: str = "", details: dict[str, Any] | None = None) -> None:
    """Record an action that is not itself a Raft command (run, kill, pause, leave)."""
    try:
        agent().write("audit", {"entry": audit_entry(action, target, details)}, timeout=5)
    except Exception as exc:  # the action happened; losing its record is logged loudly
        log.error("could not record audit entry %s %s: %s", action, target, exc)
