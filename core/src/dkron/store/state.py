"""The replicated state machine, kept in SQLite on every server.

Each Raft entry is applied in one SQLite transaction that also records the entry's index in
``meta.applied_index``. That makes replay after a restart idempotent (entries at or below the
stored index are skipped) and lets the database itself be the snapshot: log compaction only
has to write a small marker (see ``raft.py``), never rewrite the whole history.

Apply functions are deterministic: every timestamp, id and computed value comes in the
command's payload, chosen by the node that proposed it, never from this node's clock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from dkron.store import acl, followups, notified, restore

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    displayname TEXT NOT NULL DEFAULT '',
    schedule TEXT NOT NULL DEFAULT '',
    executor TEXT NOT NULL DEFAULT '',
    disabled INTEGER NOT NULL DEFAULT 0,
    parent_job TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT '',
    success_count INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    skipped_count INTEGER NOT NULL DEFAULT 0,
    missed_count INTEGER NOT NULL DEFAULT 0,
    last_success TEXT,
    last_error TEXT,
    next TEXT,
    last_scheduled_ms INTEGER,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_displayname_name ON jobs(displayname, name);
CREATE INDEX IF NOT EXISTS jobs_schedule_name ON jobs(schedule, name);
CREATE INDEX IF NOT EXISTS jobs_success_count_name ON jobs(success_count, name);
CREATE INDEX IF NOT EXISTS jobs_error_count_name ON jobs(error_count, name);
CREATE INDEX IF NOT EXISTS jobs_last_success_name ON jobs(last_success, name);
CREATE INDEX IF NOT EXISTS jobs_last_error_name ON jobs(last_error, name);
CREATE INDEX IF NOT EXISTS jobs_next_name ON jobs(next, name);
CREATE INDEX IF NOT EXISTS jobs_status_name ON jobs(status, name);
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs(parent_job);
CREATE TABLE IF NOT EXISTS job_metadata (
    job TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (job, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_metadata_kv ON job_metadata(key, value);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT NOT NULL,
    job TEXT NOT NULL,
    run_id TEXT NOT NULL DEFAULT '',
    grp INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    node TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT 'scheduled',
    scheduled_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    status TEXT NOT NULL,
    success INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    exit_code INTEGER,
    output TEXT NOT NULL DEFAULT '',
    output_truncated INTEGER NOT NULL DEFAULT 0,
    output_bytes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, id)
);
CREATE INDEX IF NOT EXISTS executions_run ON executions(run_id);
CREATE INDEX IF NOT EXISTS executions_job_started ON executions(job, started_at);
CREATE INDEX IF NOT EXISTS executions_running ON executions(status) WHERE status = 'running';
-- Retention's "more than N finished executions?" check walks this, not the table.
CREATE INDEX IF NOT EXISTS executions_finished ON executions(job) WHERE status != 'running';
CREATE TABLE IF NOT EXISTS launches (
    job TEXT NOT NULL,
    scheduled_ms INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    node TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    proposal TEXT NOT NULL DEFAULT '',
    -- Set once any execution record of this run is applied: "did it start?" must not depend
    -- on execution history, which retention trims.
    started INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, scheduled_ms, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS launches_run ON launches(run_id);
CREATE INDEX IF NOT EXISTS launches_created ON launches(created_ms);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    rpc_addr TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}',
    is_server INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'alive',
    updated_at TEXT
);
"""

FINAL_STATUSES = ("success", "failed", "skipped", "missed", "lost")


class ApplyError(Exception):
    """A command that is valid Raft-wise but refused by the state (answered as an HTTP error)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (kill -9); like pysyncobj's own journal it
    # does not fsync each commit, so a power loss may drop the last moments (docs/operations.md).
    conn.execute("PRAGMA synchronous=NORMAL")
    # Page cache per connection: the writer gets 8 MB; readers (one per HTTP/gRPC thread that
    # reads) 2 MB each, so RSS stays bounded however many threads have read something.
    conn.execute(f"PRAGMA cache_size={-2000 if readonly else -8000}")
    conn.execute("PRAGMA temp_store=MEMORY")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


class StateMachine:
    """Applies commands to the database. Only the Raft tick thread calls :meth:`apply`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.db = connect(path)
        self.db.executescript(SCHEMA + acl.SCHEMA)
        self.db.executescript(notified.SCHEMA)
        self.db.executescript(followups.SCHEMA)
        self._lock = threading.Lock()
        self.listeners: list[Callable[[str, dict[str, Any], Any], None]] = []
        self._handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "put_job": self._put_job,
            "delete_job": self._delete_job,
            "set_disabled": self._set_disabled,
            "launch": self._launch,
            "record": self._record,
            "delete_executions": self._delete_executions,
            "set_meta": self._set_meta,
            "upsert_node": self._upsert_node,
            "node_left": self._node_left,
            "remove_server": self._remove_server,
            "set_epoch": self._set_epoch,
            # Retries and dependent runs (store/followups.py).
            "claim_followups": lambda payload: followups.claim(self.db, payload),
            "mark_runs": lambda payload: followups.mark_runs(self.db, payload),
            "noop": lambda payload: None,
            "restore_jobs": lambda payload: restore.apply_restore(self, payload),
            "notified": lambda payload: notified.apply_notified(self.db, payload),
        }
        self._handlers.update({name: partial(handler, self.db) for name, handler in acl.HANDLERS.items()})

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def lock(self) -> threading.Lock:
        """Held while an entry is applied (and while a snapshot copy is installed)."""
        return self._lock

    def applied_index(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='applied_index'").fetchone()
        return int(row[0]) if row else 0

    def apply(self, index: int, command: str, payload: dict[str, Any]) -> Any:
        """Apply one committed entry exactly once; return its result (or an error dict)."""
        if index <= self.applied_index():
            return {"replayed": True}
        handler = self._handlers.get(command)
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                result: Any = handler(payload) if handler else {"error": f"unknown command {command}"}
                acl.record_from_payload(self.db, payload, result)  # the change's audit entry, same transaction
            except (ApplyError, acl.AclApplyError) as exc:
                # The refusal is itself the deterministic outcome: record the index, change nothing else.
                self.db.execute("ROLLBACK")
                self.db.execute("BEGIN IMMEDIATE")
                result = {"error": str(exc), "status": exc.status}
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES('applied_index', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(index),),
            )
            self.db.execute("COMMIT")
        for listener in self.listeners:
            listener(command, payload, result)
        return result

    # -- jobs --------------------------------------------------------------------------------
    def _job_exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM jobs WHERE name=?", (name,)).fetchone() is not None

    def _check_parent(self, name: str, parent: str) -> None:
        if not parent:
            return
        if not self._job_exists(parent):
            raise ApplyError(f"specified parent job not found: {parent}", 404)
        seen = {name}
        current = parent
        while current:  # walk up: a cycle would make the chain come back to this job
            if current in seen:
                raise ApplyError(f"parent_job {parent!r} would create a dependency cycle", 400)
            seen.add(current)
            row = self.db.execute("SELECT parent_job FROM jobs WHERE name=?", (current,)).fetchone()
            current = row[0] if row else ""

    def _put_job(self, payload: dict[str, Any]) -> dict[str, Any]:
        job = payload["job"]
        name = job["name"]
        now = payload["now"]
        self._check_parent(name, job["parent_job"])
        existing = self._job_exists(name)
        if payload.get("create_only") and existing:
            raise ApplyError(f"job {name} already exists", 409)
        body = json.dumps(job, separators=(",", ":"), sort_keys=True)
        self.db.execute(
            """INSERT INTO jobs(name, displayname, schedule, executor, disabled, parent_job, next,
                   created_at, updated_at, body)
               VALUES (?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(name) DO UPDATE SET displayname=excluded.displayname,
                   schedule=excluded.schedule, executor=excluded.executor, disabled=excluded.disabled,
                   parent_job=excluded.parent_job, next=excluded.next, updated_at=excluded.updated_at,
                   body=excluded.body""",
            (
                name,
                job["displayname"],
                job["schedule"],
                job["executor"],
                int(job["disabled"]),
                job["parent_job"],
                payload.get("next"),
                now,
                now,
                body,
            ),
        )
        if payload.get("reset_schedule"):
            # A changed schedule starts afresh: ticks of the old schedule are not "missed".
            self.db.execute("UPDATE jobs SET last_scheduled_ms=NULL WHERE name=?", (name,))
        self.db.execute("DELETE FROM job_metadata WHERE job=?", (name,))
        self.db.executemany(
            "INSERT INTO job_metadata(job, key, value) VALUES (?,?,?)",
            [(name, key, value) for key, value in job["metadata"].items()],
        )
        return {"created": not existing}

    def _delete_job(self, payload: dict[str, Any]) -> dict[str, Any]:
        name = payload["name"]
        if not self._job_exists(name):
            raise ApplyError(f"job not found: {name}", 404)
        children = [r[0] for r in self.db.execute("SELECT name FROM jobs WHERE parent_job=?", (name,))]
        if children:
            raise ApplyError(f"job {name} has dependent jobs ({', '.join(sorted(children))}); delete them first", 409)
        for table, column in (
            ("jobs", "name"),
            ("job_metadata", "job"),
            ("executions", "job"),
            ("launches", "job"),
            ("followups", "job"),  # a pending retry must not run for a new job of the same name
        ):
            self.db.execute(f"DELETE FROM {table} WHERE {column}=?", (name,))
        return {"deleted": name}

    def _set_disabled(self, payload: dict[str, Any]) -> dict[str, Any]:
        name = payload["name"]
        row = self.db.execute("SELECT body FROM jobs WHERE name=?", (name,)).fetchone()
        if row is None:
            raise ApplyError(f"job not found: {name}", 404)
        job = json.loads(row[0])
        job["disabled"] = bool(payload["disabled"])
        self.db.execute(
            "UPDATE jobs SET disabled=?, body=?, next=?, updated_at=? WHERE name=?",
            (
                int(job["disabled"]),
                json.dumps(job, separators=(",", ":"), sort_keys=True),
                payload.get("next"),
                payload["now"],
                name,
            ),
        )
        return {"disabled": job["disabled"]}

    # -- launches ----------------------------------------------------------------------------
    def _launch(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Record launch intents; the first record for (job, scheduled time) wins.

        Returns the run ids this proposal owns. Only those may be dispatched, which makes a
        tick impossible to launch twice, even by two nodes that both believe they lead. A
        proposer retrying after an unknown outcome (same ``proposal`` id) gets its own back.
        """
        epoch = payload.get("epoch")
        if epoch is not None and epoch < self._epoch():
            # Proposed by a leader that has been deposed since (e.g. it was frozen): the new
            # leader already reconciled without these ticks, so they must not commit now.
            return {"accepted": [], "stale": True}
        accepted = []
        proposal = payload["proposal"]
        for launch in payload["launches"]:
            if not self._job_exists(launch["job"]):
                continue
            # One slot per tick, whatever launched it (scheduled, catch-up): the first record wins.
            # Manual runs have their own slot (their "tick" is the request time).
            key = (launch["job"], launch["scheduled_ms"], "manual" if launch["kind"] == "manual" else "tick")
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO launches(job, scheduled_ms, kind, run_id, execution_id, node,"
                " created_ms, proposal) VALUES (?,?,?,?,?,?,?,?)",
                (*key, launch["run_id"], launch["execution_id"], launch["node"], payload["now_ms"], proposal),
            )
            if (
                cursor.rowcount
                or self.db.execute(
                    "SELECT 1 FROM launches WHERE job=? AND scheduled_ms=? AND kind=? AND proposal=?",
                    (*key, proposal),
                ).fetchone()
            ):
                accepted.append(launch["run_id"])
        for name, state in payload.get("schedule_state", {}).items():
            self.db.execute(
                "UPDATE jobs SET next=?, last_scheduled_ms=MAX(COALESCE(last_scheduled_ms, 0), ?) WHERE name=?",
                (state["next"], state["last_scheduled_ms"], name),
            )
        if payload.get("prune_before_ms"):
            self.db.execute("DELETE FROM launches WHERE created_ms < ?", (payload["prune_before_ms"],))
        return {"accepted": accepted}

    # -- executions --------------------------------------------------------------------------
    def _record(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Upsert execution records (started, finished, skipped, missed, lost) and job counters."""
        keep = payload.get("keep_per_job", 100)
        oldest = payload.get("keep_since")
        finished: set[str] = set()  # jobs with a new finished execution: the ones to trim
        written: list[dict[str, Any]] = []
        for ex in payload["executions"]:
            job = ex["job_name"]
            if not self._job_exists(job):
                continue  # the job was deleted while this ran: nothing to attach it to
            previous = self.db.execute("SELECT status FROM executions WHERE job=? AND id=?", (job, ex["id"])).fetchone()
            if previous is not None and previous[0] in FINAL_STATUSES:
                continue  # a late or duplicate report never overwrites a final result
            self.db.execute(
                """INSERT OR REPLACE INTO executions(id, job, run_id, grp, attempt, node, kind, scheduled_at,
                       started_at, finished_at, status, success, error, exit_code, output,
                       output_truncated, output_bytes)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    ex["id"],
                    job,
                    ex.get("run_id", ""),
                    ex.get("group", 0),
                    ex.get("attempt", 1),
                    ex.get("node_name", ""),
                    ex.get("kind", "scheduled"),
                    ex.get("scheduled_at"),
                    ex.get("started_at"),
                    ex.get("finished_at"),
                    ex["status"],
                    int(ex.get("success", False)),
                    ex.get("error", ""),
                    ex.get("exit_code"),
                    ex.get("output", ""),
                    int(ex.get("output_truncated", False)),
                    ex.get("output_bytes", 0),
                ),
            )
            self._count(job, ex)
            if ex.get("run_id"):
                self.db.execute("UPDATE launches SET started=1 WHERE run_id=? AND started=0", (ex["run_id"],))
            if ex["status"] != "running":
                finished.add(job)
            written.append(ex)
        # Retries, dependent runs and ephemeral deletion follow from the records just written.
        follow = followups.after_record(self.db, written, payload.get("now_ms", 0))
        for job in finished - set(follow["deleted"]):
            self._trim(job, keep, oldest)
        return {"recorded": len(payload["executions"]), **follow}

    def _count(self, job: str, ex: dict[str, Any]) -> None:
        status = ex["status"]
        if status == "success":
            self.db.execute(
                "UPDATE jobs SET success_count=success_count+1, status='success',"
                " last_success=MAX(COALESCE(last_success, ''), ?) WHERE name=?",
                (ex["finished_at"], job),
            )
        elif status in ("failed", "lost"):
            self.db.execute(
                "UPDATE jobs SET error_count=error_count+1, status='failed',"
                " last_error=MAX(COALESCE(last_error, ''), ?) WHERE name=?",
                (ex["finished_at"], job),
            )
        elif status == "skipped":
            self.db.execute("UPDATE jobs SET skipped_count=skipped_count+1 WHERE name=?", (job,))
        elif status == "missed":
            # The missed ticks count as scheduled: the next leader must not report them again.
            self.db.execute(
                "UPDATE jobs SET missed_count=missed_count+?,"
                " last_scheduled_ms=MAX(COALESCE(last_scheduled_ms, 0), ?) WHERE name=?",
                (ex.get("missed", 1), ex.get("last_tick_ms", 0), job),
            )

    def _trim(self, job: str, keep: int, oldest: str | None) -> None:
        """Retention: ``keep`` finished executions per job, none older than ``oldest``.

        Trimmed in steps: only once more than ``keep`` + a tenth have piled up, back to
        ``keep``. Trimming on every record sorted each job's history once per batch, 85 % of
        the apply time at 500 runs a second (on every server); a check without a sort is cheap.
        """
        slack = keep // 10
        over = self.db.execute(
            "SELECT 1 FROM executions WHERE job=? AND status != 'running' LIMIT 1 OFFSET ?", (job, keep + slack)
        ).fetchone()
        if over is not None:
            self.db.execute(
                """DELETE FROM executions WHERE job=? AND status != 'running' AND id IN (
                   SELECT id FROM executions WHERE job=? AND status != 'running'
                   ORDER BY started_at DESC, id DESC LIMIT -1 OFFSET ?)""",
                (job, job, keep),
            )
        if oldest:
            self.db.execute(
                "DELETE FROM executions WHERE job=? AND status != 'running' AND started_at < ?", (job, oldest)
            )

    def _delete_executions(self, payload: dict[str, Any]) -> dict[str, Any]:
        name = payload["name"]
        if not self._job_exists(name):
            raise ApplyError(f"job not found: {name}", 404)
        self.db.execute("DELETE FROM executions WHERE job=? AND status != 'running'", (name,))
        self.db.execute(
            "UPDATE jobs SET success_count=0, error_count=0, skipped_count=0, missed_count=0,"
            " last_success=NULL, last_error=NULL WHERE name=?",
            (name,),
        )
        return {"deleted": name}

    # -- nodes (registrations; liveness from heartbeats stays in the leader's memory) ----------
    def _upsert_node(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.db.execute(
            """INSERT INTO nodes(name, rpc_addr, tags, is_server, version, status, updated_at)
               VALUES (?,?,?,?,?, 'alive', ?)
               ON CONFLICT(name) DO UPDATE SET rpc_addr=excluded.rpc_addr, tags=excluded.tags,
                   is_server=excluded.is_server, version=excluded.version, status='alive',
                   updated_at=excluded.updated_at""",
            (
                payload["name"],
                payload["rpc_addr"],
                json.dumps(payload.get("tags") or {}, sort_keys=True),
                int(bool(payload.get("is_server"))),
                payload.get("version", ""),
                payload.get("now"),
            ),
        )
        return {"ok": True}

    def _node_left(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.db.execute(
            "UPDATE nodes SET status='left', updated_at=? WHERE name=?", (payload.get("now"), payload["name"])
        )
        return {"ok": True}

    def _epoch(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='leader_epoch'").fetchone()
        return int(row[0]) if row else 0

    def _set_epoch(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A new leader's first write: its Raft term becomes the epoch launches are fenced by."""
        epoch = max(self._epoch(), int(payload["epoch"]))
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES('leader_epoch', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(epoch),),
        )
        return {"epoch": epoch}

    def _remove_server(self, payload: dict[str, Any]) -> dict[str, Any]:
        # Every server drops it from its own server list too (through the apply listener).
        self.db.execute("DELETE FROM nodes WHERE name=?", (payload["name"],))
        return {"ok": True}

    def _set_meta(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (payload["key"], json.dumps(payload["value"])),
        )
        return {"ok": True}

    def close(self) -> None:
        self.db.close()
