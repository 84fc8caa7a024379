"""Replicated ACL tokens and the audit log: tables, apply handlers and reads.

Tokens are stored as the SHA-256 of the secret, never the secret itself. A plain (unsalted,
fast) hash is the right tool here, unlike for passwords: the secret is 32 random bytes from
``secrets.token_urlsafe``, so there is nothing to guess or to look up in a dictionary, and a
fast hash keeps the per-request check cheap. Whoever reads the state database (or a Raft
snapshot) learns only hashes, which cannot be sent as a token.

Audit entries are written in the same SQLite transaction as the change they describe when the
change is a Raft command (the proposer adds ``_audit`` to its payload, see
:func:`record_from_payload`), or by their own ``audit`` command for actions that are not one
(manual runs, kills, leave). Every value (id, time, retention cut-off) comes in the payload, so
applying is deterministic.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS acl_tokens (
    accessor TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL,
    scope TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    actor_name TEXT NOT NULL DEFAULT '',
    remote_addr TEXT NOT NULL DEFAULT '',
    node TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_time ON audit(time);
CREATE INDEX IF NOT EXISTS audit_action ON audit(action, seq);
CREATE INDEX IF NOT EXISTS audit_target ON audit(target, seq);
"""

TOKEN_FIELDS = ("accessor", "name", "role", "scope", "created_at", "created_by", "revoked_at")


class AclApplyError(Exception):
    """A refused ACL command (e.g. a second bootstrap); becomes ``{"error", "status"}``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- apply handlers (tick thread; one transaction each) -------------------------------------


def _insert_token(db: sqlite3.Connection, token: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO acl_tokens(accessor, secret_hash, name, role, scope, created_at, created_by) "
        "VALUES (?,?,?,?,?,?,?)",
        (
            token["accessor"],
            token["secret_hash"],
            token.get("name", ""),
            token["role"],
            json.dumps(token.get("scope") or {}, sort_keys=True),
            token["created_at"],
            token.get("created_by", ""),
        ),
    )


def apply_bootstrap(db: sqlite3.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    """The first admin token, exactly once in the cluster's life (even if it is later revoked)."""
    done = db.execute("SELECT value FROM meta WHERE key='acl_bootstrapped'").fetchone()
    if done is not None:
        raise AclApplyError("ACLs are already bootstrapped; create further tokens with an admin token", 409)
    _insert_token(db, payload["token"])
    db.execute(
        "INSERT INTO meta(key, value) VALUES('acl_bootstrapped', ?)", (json.dumps(payload["token"]["accessor"]),)
    )
    return {"accessor": payload["token"]["accessor"]}


def apply_token_create(db: sqlite3.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    if db.execute("SELECT 1 FROM acl_tokens WHERE accessor=?", (payload["token"]["accessor"],)).fetchone():
        raise AclApplyError("a token with this accessor already exists", 409)
    _insert_token(db, payload["token"])
    return {"accessor": payload["token"]["accessor"]}


def apply_token_revoke(db: sqlite3.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    row = db.execute("SELECT revoked_at FROM acl_tokens WHERE accessor=?", (payload["accessor"],)).fetchone()
    if row is None:
        raise AclApplyError(f"token not found: {payload['accessor']}", 404)
    if row[0] is None:
        db.execute("UPDATE acl_tokens SET revoked_at=? WHERE accessor=?", (payload["now"], payload["accessor"]))
    return {"accessor": payload["accessor"], "revoked": True}


def record_audit(db: sqlite3.Connection, entry: dict[str, Any]) -> None:
    """Insert one audit entry (idempotent on its id) and apply the retention it carries."""
    db.execute(
        "INSERT OR IGNORE INTO audit(id, time, actor, actor_name, remote_addr, node, action, target, details) "
        "VALUES (?,?,?,?,?,?,?,?,?)",
        (
            entry["id"],
            entry["time"],
            entry.get("actor", "anonymous"),
            entry.get("actor_name", ""),
            entry.get("remote_addr", ""),
            entry.get("node", ""),
            entry["action"],
            entry.get("target", ""),
            json.dumps(entry.get("details") or {}, sort_keys=True, default=str),
        ),
    )
    keep = entry.get("keep_count")
    if keep:
        db.execute("DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?", (int(keep),))
    if entry.get("keep_since"):
        db.execute("DELETE FROM audit WHERE time < ?", (entry["keep_since"],))


def apply_audit(db: sqlite3.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    record_audit(db, payload["entry"])
    return {"ok": True}


def record_from_payload(db: sqlite3.Connection, payload: dict[str, Any], result: Any) -> None:
    """After any command: record the ``_audit`` entry its proposer attached, if it succeeded."""
    entry = payload.get("_audit") if isinstance(payload, dict) else None
    if entry and not (isinstance(result, dict) and "error" in result):
        record_audit(db, entry)


HANDLERS = {
    "acl_bootstrap": apply_bootstrap,
    "acl_token_create": apply_token_create,
    "acl_token_revoke": apply_token_revoke,
    "audit": apply_audit,
}


# -- reads (any thread, on a Reader's connection) -------------------------------------------


def _token(row: sqlite3.Row) -> dict[str, Any]:
    token = {key: row[key] for key in TOKEN_FIELDS}
    token["scope"] = json.loads(token["scope"] or "{}")
    return token


def token_by_hash(db: sqlite3.Connection, secret_hash: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM acl_tokens WHERE secret_hash=?", (secret_hash,)).fetchone()
    return _token(row) if row else None


def token_by_accessor(db: sqlite3.Connection, accessor: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM acl_tokens WHERE accessor=?", (accessor,)).fetchone()
    return _token(row) if row else None


def list_tokens(db: sqlite3.Connection) -> list[dict[str, Any]]:
    return [_token(row) for row in db.execute("SELECT * FROM acl_tokens ORDER BY created_at, accessor")]


def bootstrapped(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM meta WHERE key='acl_bootstrapped'").fetchone() is not None


def query_audit(
    db: sqlite3.Connection,
    *,
    action: str = "",
    target: str = "",
    actor: str = "",
    since: str = "",
    until: str = "",
    start: int = 0,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], int]:
    """Newest first, paged; every filter optional (``action`` may end with ``*``)."""
    where, args = [], []
    if action:
        if action.endswith("*"):
            where.append("action LIKE ? ESCAPE '\\'")
            args.append(action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        else:
            where.append("action = ?")
            args.append(action)
    for column, value in (("target", target), ("actor", actor)):
        if value:
            where.append(f"({column} = ?" + (" OR actor_name = ?)" if column == "actor" else ")"))
            args.extend([value, value] if column == "actor" else [value])
    if since:
        where.append("time >= ?")
        args.append(since)
    if until:
        where.append("time < ?")
        args.append(until)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    total = db.execute(f"SELECT COUNT(*) FROM audit {clause}", args).fetchone()[0]
    rows = db.execute(f"SELECT * FROM audit {clause} ORDER BY seq DESC LIMIT ? OFFSET ?", [*args, limit, start])
    entries = []
    for row in rows:
        entry = {key: row[key] for key in row.keys() if key != "details"}  # noqa: SIM118 - a Row iterates values
        entry["details"] = json.loads(row["details"] or "{}")
        entries.append(entry)
    return entries, total
