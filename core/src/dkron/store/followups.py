"""What follows a run, decided inside the state machine: retries, dependent jobs, ephemeral deletion.

When the last execution of a run attempt is recorded, the apply function itself decides what
follows, from replicated state only:

* the attempt failed and the job has retries left: a *retry* follow-up (attempt + 1) with a
  not-before time = the attempt's finish time + exponential backoff with a jitter derived from
  the run id (so every server computes the same time);
* otherwise the run is over: each child whose ``depends_on_status`` matches the outcome gets a
  *dependent* follow-up; an ``ephemeral`` job that succeeded is deleted.

A follow-up is a committed record, so whichever server leads when it falls due runs it (Dkron
sleeps in the leader's memory and loses it on a leader change). The leader claims it with
``claim_followups`` (choosing the target nodes, fenced by its epoch like every launch) and
dispatches it; a new leader re-dispatches claimed follow-ups that never started to the same
nodes, whose run ledger refuses a second start.

Ids are deterministic (``<run id>#<attempt>``), so deciding twice is harmless.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from dkron.timing import duration_ms, stable_fraction

SCHEMA = """
CREATE TABLE IF NOT EXISTS followups (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    kind TEXT NOT NULL,
    not_before_ms INTEGER NOT NULL,
    grp INTEGER NOT NULL,
    cause TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    node TEXT,
    proposal TEXT NOT NULL DEFAULT '',
    started INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS followups_unclaimed ON followups(not_before_ms) WHERE node IS NULL;
CREATE INDEX IF NOT EXISTS followups_created ON followups(created_ms);
CREATE TABLE IF NOT EXISTS run_marks (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    mark TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, attempt)
) WITHOUT ROWID;
"""

OUTCOME_STATUSES = ("success", "failed", "lost")
DEPENDS_ON = ("success", "failure", "always")
#: Cluster defaults; the leader replicates its --retry-backoff-base/-max into meta.
DEFAULT_BACKOFF_BASE_MS = 1_000
DEFAULT_BACKOFF_MAX_MS = 300_000


def followup_id(run_id: str, attempt: int) -> str:
    return f"{run_id}#{attempt}"


def dependent_run_id(child: str, parent_run_id: str) -> str:
    """A child's run id names the parent run that triggered it (deterministic)."""
    return f"{child}@{parent_run_id}"


def _ms(iso: str | None) -> int:
    if not iso:
        return 0
    text = iso[:-1] + "+00:00" if iso.endswith("Z") else iso
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def backoff_ms(attempt: int, run_id: str, base_ms: int, max_ms: int) -> int:
    """Delay after failed ``attempt`` (1-based): base * 2^(attempt-1), capped, with "equal jitter"
    (between half and all of it), the jitter derived from the run id: identical on every server."""
    raw = min(max_ms, base_ms * (2 ** min(attempt - 1, 40)))
    return int(raw / 2 + raw / 2 * stable_fraction(run_id, attempt))


def _backoff_settings(db: sqlite3.Connection, job: dict[str, Any]) -> tuple[int, int]:
    row = db.execute("SELECT value FROM meta WHERE key='retry_backoff'").fetchone()
    cluster = json.loads(row[0]) if row else {}
    base = duration_ms(job.get("retry_backoff"), cluster.get("base_ms", DEFAULT_BACKOFF_BASE_MS))
    cap = duration_ms(job.get("retry_backoff_max"), cluster.get("max_ms", DEFAULT_BACKOFF_MAX_MS))
    return base, max(cap, 0)


def _launch_of(db: sqlite3.Connection, run_id: str, attempt: int) -> tuple[int, int | None]:
    """(target node count, group) of a run attempt, from its follow-up or launch record.

    The group is not taken from the execution rows: a result an agent delivers itself after its
    stream broke (``ExecutionDone``) carries no group."""
    row = db.execute("SELECT node, grp FROM followups WHERE id=?", (followup_id(run_id, attempt),)).fetchone()
    if row is None and attempt == 1:
        row = db.execute("SELECT node, execution_id FROM launches WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
    if row is None:
        return 1, None
    nodes = [n for n in (row[0] or "").split(",") if n]
    try:
        group = int(row[1])
    except (TypeError, ValueError):
        group = None
    return max(1, len(nodes)), group


def after_record(db: sqlite3.Connection, written: list[dict[str, Any]], now_ms: int) -> dict[str, list[str]]:
    """Called inside the ``record`` apply with the execution records it wrote.

    Runs on the Raft tick thread for every batch of records, so the common case (a job without
    retries, children or ephemeral) costs one indexed lookup per job, evaluated in SQL."""
    followups: list[str] = []
    deleted: list[str] = []
    unstarted = {r[0] for r in db.execute("SELECT id FROM followups WHERE started=0")}  # usually few
    done: set[tuple[str, str, int]] = set()
    for ex in written:
        run_id, attempt = ex.get("run_id") or "", int(ex.get("attempt", 1))
        if not run_id:
            continue
        fid = followup_id(run_id, attempt)
        if fid in unstarted:
            db.execute("UPDATE followups SET started=1 WHERE id=?", (fid,))
            unstarted.discard(fid)
        if ex["status"] in OUTCOME_STATUSES:
            done.add((ex["job_name"], run_id, attempt))
    interesting: dict[str, bool] = {}
    for job_name, run_id, attempt in sorted(done):
        if job_name not in interesting:
            # Nothing can follow a run of a job without retries, children or ephemeral.
            row = db.execute(
                "SELECT COALESCE(json_extract(body, '$.retries'), 0) > 0 OR json_extract(body, '$.ephemeral') = 1"
                " OR EXISTS (SELECT 1 FROM jobs c WHERE c.parent_job = jobs.name) FROM jobs WHERE name=?",
                (job_name,),
            ).fetchone()
            interesting[job_name] = bool(row and row[0])
        if not interesting[job_name]:
            continue
        rows = db.execute(
            "SELECT status, finished_at, grp FROM executions WHERE job=? AND run_id=? AND attempt=?",
            (job_name, run_id, attempt),
        ).fetchall()
        finals = [r for r in rows if r[0] in OUTCOME_STATUSES]
        expected, group = _launch_of(db, run_id, attempt)
        if len(finals) < len(rows) or len(finals) < expected:
            continue  # other nodes of this attempt are still running
        success = all(r[0] == "success" for r in finals)
        # "lost" means the outcome is unknown (the run may have finished, or still run): retrying
        # could run the job twice, so only a known failure is retried.
        retriable = not success and all(r[0] != "lost" for r in finals)
        finished_ms = max((_ms(r[1]) for r in finals), default=now_ms) or now_ms
        if group is None:
            group = max(r[2] for r in finals)
        body = db.execute("SELECT body FROM jobs WHERE name=?", (job_name,)).fetchone()
        if body is not None:
            outcome = (success, retriable)
            _run_finished(db, json.loads(body[0]), run_id, attempt, outcome, finished_ms, group, followups, deleted)
    return {"followups": followups, "deleted": deleted}


def _has_children(db: sqlite3.Connection, job_name: str) -> bool:
    return db.execute("SELECT 1 FROM jobs WHERE parent_job=? LIMIT 1", (job_name,)).fetchone() is not None


def _run_finished(
    db: sqlite3.Connection,
    job: dict[str, Any],
    run_id: str,
    attempt: int,
    outcome: tuple[bool, bool],
    finished_ms: int,
    group: int,
    followups: list[str],
    deleted: list[str],
) -> None:
    job_name = job["name"]
    success, retriable = outcome
    killed = db.execute("SELECT 1 FROM run_marks WHERE run_id=? AND attempt=?", (run_id, attempt)).fetchone()
    if retriable and not killed and attempt < int(job.get("retries") or 0) + 1:
        base, cap = _backoff_settings(db, job)
        _insert(
            db,
            job=job_name,
            run_id=run_id,
            attempt=attempt + 1,
            kind="retry",
            not_before_ms=finished_ms + backoff_ms(attempt, run_id, base, cap),
            group=group,
            cause=f"attempt {attempt} failed",
            created_ms=finished_ms,
            out=followups,
        )
        return
    outcome = "success" if success else "failure"
    children = db.execute("SELECT name, body FROM jobs WHERE parent_job=? ORDER BY name", (job_name,)).fetchall()
    for child_name, child_body in children:
        child = json.loads(child_body)
        wanted = child.get("depends_on_status") or "success"
        if child.get("disabled") or wanted not in ("always", outcome):
            continue
        _insert(
            db,
            job=child_name,
            run_id=dependent_run_id(child_name, run_id),
            attempt=1,
            kind="dependent",
            not_before_ms=finished_ms,
            group=finished_ms * 1_000_000,
            cause=f"parent {job_name} run {run_id}: {outcome}",
            created_ms=finished_ms,
            out=followups,
        )
    if success and job.get("ephemeral") and not children:
        for table, column in (
            ("jobs", "name"),
            ("job_metadata", "job"),
            ("executions", "job"),
            ("launches", "job"),
            ("followups", "job"),
        ):
            db.execute(f"DELETE FROM {table} WHERE {column}=?", (job_name,))
        deleted.append(job_name)


def _insert(
    db: sqlite3.Connection,
    *,
    job: str,
    run_id: str,
    attempt: int,
    kind: str,
    not_before_ms: int,
    group: int,
    cause: str,
    created_ms: int,
    out: list[str],
) -> None:
    fid = followup_id(run_id, attempt)
    cursor = db.execute(
        "INSERT OR IGNORE INTO followups(id, job, run_id, attempt, kind, not_before_ms, grp, cause, created_ms)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (fid, job, run_id, attempt, kind, not_before_ms, group, cause, created_ms),
    )
    if cursor.rowcount:
        out.append(fid)


def _epoch(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key='leader_epoch'").fetchone()
    return int(row[0]) if row else 0


def claim(db: sqlite3.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    """``claim_followups``: the leader takes due follow-ups, naming their target nodes.

    Only unclaimed follow-ups of existing jobs are accepted (a retried proposal with the same
    ``proposal`` id gets its own back); a deposed leader's claim is refused by epoch."""
    epoch = payload.get("epoch")
    if epoch is not None and epoch < _epoch(db):
        return {"accepted": [], "stale": True}
    proposal = payload["proposal"]
    accepted = []
    for item in payload["claims"]:
        row = db.execute("SELECT job, node, proposal FROM followups WHERE id=?", (item["id"],)).fetchone()
        if row is None:
            continue
        if db.execute("SELECT 1 FROM jobs WHERE name=?", (row[0],)).fetchone() is None:
            db.execute("DELETE FROM followups WHERE id=?", (item["id"],))  # its job was deleted
            continue
        if row[1] is None:
            db.execute("UPDATE followups SET node=?, proposal=? WHERE id=?", (item["node"], proposal, item["id"]))
            accepted.append(item["id"])
        elif row[2] == proposal:
            accepted.append(item["id"])
    if payload.get("prune_before_ms"):
        cutoff = payload["prune_before_ms"]
        db.execute("DELETE FROM followups WHERE created_ms < ? AND node IS NOT NULL", (cutoff,))
        db.execute("DELETE FROM run_marks WHERE created_ms < ?", (cutoff,))
    return {"accepted": accepted}


def mark_runs(db: sqlite3.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    """``mark_runs``: runs killed on purpose (API kill, ``concurrency: replace``) are not retried."""
    for item in payload["runs"]:
        db.execute(
            "INSERT OR IGNORE INTO run_marks(run_id, attempt, mark, created_ms) VALUES (?,?,?,?)",
            (item["run_id"], int(item.get("attempt", 1)), payload.get("mark", "killed"), payload["now_ms"]),
        )
    return {"marked": len(payload["runs"])}


def set_backoff(db: sqlite3.Connection, base_ms: int, max_ms: int) -> None:
    db.execute(
        "INSERT INTO meta(key, value) VALUES('retry_backoff', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (json.dumps({"base_ms": base_ms, "max_ms": max_ms}),),
    )


# -- reads (on a reader's connection) ----------------------------------------------------------
def _row(row: sqlite3.Row) -> dict[str, Any]:
    return dict(row)


def unclaimed(db: sqlite3.Connection, limit: int = 1000) -> list[dict[str, Any]]:
    rows = db.execute("SELECT * FROM followups WHERE node IS NULL ORDER BY not_before_ms LIMIT ?", (limit,)).fetchall()
    return [_row(r) for r in rows]


def claimed_unstarted(db: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = db.execute("SELECT * FROM followups WHERE node IS NOT NULL AND started=0").fetchall()
    return [_row(r) for r in rows]


def exists(db: sqlite3.Connection, run_id: str, attempt: int) -> bool:
    return db.execute("SELECT 1 FROM followups WHERE id=?", (followup_id(run_id, attempt),)).fetchone() is not None


def started(db: sqlite3.Connection, run_id: str, attempt: int) -> bool:
    row = db.execute("SELECT started FROM followups WHERE id=?", (followup_id(run_id, attempt),)).fetchone()
    return bool(row and row[0])


def pending_for_job(db: sqlite3.Connection, job: str) -> list[dict[str, Any]]:
    rows = db.execute("SELECT * FROM followups WHERE job=? AND started=0 ORDER BY not_before_ms", (job,)).fetchall()
    return [_row(r) for r in rows]
