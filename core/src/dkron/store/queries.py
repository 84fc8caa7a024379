"""Read side of the store: paged, sorted and filtered in SQL, never by loading every row.

Readers use their own connections (one per thread); SQLite's WAL lets them read a consistent
snapshot while the Raft thread applies entries.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dkron.store.state import connect

#: Dkron's sortable job fields (``id`` means ``name``), mapped to indexed columns.
JOB_SORTS = {
    "id": "name",
    "name": "name",
    "displayname": "displayname",
    "schedule": "schedule",
    "success_count": "success_count",
    "error_count": "error_count",
    "last_success": "last_success",
    "last_error": "last_error",
    "next": "next",
    "status": "status",
}
EXECUTION_SORTS = {
    "id": "started_at",
    "started_at": "started_at",
    "finished_at": "finished_at",
    "attempt": "attempt",
}
JOB_STATUSES = ("success", "failed", "untriggered")


class QueryError(ValueError):
    """A bad query parameter (answered with 400)."""


@dataclass
class JobQuery:
    q: str = ""
    status: str = ""
    disabled: bool | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: ``key`` (the job has the tag) or ``key=value`` (Dkron's ``value:count`` form matches its value).
    tag: str = ""
    executor: str = ""
    sort: str = "id"
    order: str = "ASC"
    start: int = 0
    end: int | None = None


def _page(start: int, end: int | None) -> tuple[int, int]:
    if start < 0 or (end is not None and end < start):
        raise QueryError("_start must be >= 0 and _end >= _start")
    limit = -1 if end is None else end - start
    return start, limit


def _order(order: str) -> str:
    return "DESC" if order.upper() == "DESC" else "ASC"


class Reader:
    """Thread-safe read access: each calling thread gets its own read-only connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, readonly=True)
        return conn

    # -- jobs --------------------------------------------------------------------------------
    def list_jobs(self, query: JobQuery) -> tuple[list[dict[str, Any]], int]:
        where, args = ["1=1"], []
        if query.q:
            # Case-insensitive substring of name, displayname or a metadata value (Dkron's searches
            # names only, case-sensitively). The metadata side is one pass over job_metadata.
            like = "%" + query.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(
                "(name LIKE ? ESCAPE '\\' OR displayname LIKE ? ESCAPE '\\'"
                " OR name IN (SELECT job FROM job_metadata WHERE value LIKE ? ESCAPE '\\'))"
            )
            args += [like, like, like]
        if query.status:
            if query.status not in JOB_STATUSES:
                raise QueryError(f"status must be one of {', '.join(JOB_STATUSES)}")
            where.append("status = ?")
            args.append("" if query.status == "untriggered" else query.status)
        if query.disabled is not None:
            where.append("disabled = ?")
            args.append(int(query.disabled))
        if query.executor:
            where.append("executor = ?")
            args.append(query.executor)
        if query.tag:
            key, has_value, value = query.tag.partition("=")
            # Tags live in the job body only; json_each over 10,000 small bodies takes a few ms.
            if has_value:
                where.append(
                    "EXISTS (SELECT 1 FROM json_each(body, '$.tags') t WHERE t.key = ?"
                    " AND (t.value = ? OR t.value LIKE ? ESCAPE '\\'))"
                )
                escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                args += [key, value, escaped + ":%"]
            else:
                where.append("EXISTS (SELECT 1 FROM json_each(body, '$.tags') t WHERE t.key = ?)")
                args.append(key)
        for key, value in query.metadata.items():
            where.append("name IN (SELECT job FROM job_metadata WHERE key=? AND value=?)")
            args += [key, value]
        sort = JOB_SORTS.get(query.sort)
        if sort is None:
            raise QueryError(f"_sort must be one of {', '.join(sorted(JOB_SORTS))}")
        offset, limit = _page(query.start, query.end)
        clause = " AND ".join(where)
        total = self.db.execute(f"SELECT COUNT(*) FROM jobs WHERE {clause}", args).fetchone()[0]
        order = _order(query.order)
        rows = self.db.execute(
            f"SELECT * FROM jobs WHERE {clause} ORDER BY {sort} {order}, name {order} LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        return [self._job(row) for row in rows], total

    def get_job(self, name: str, *, with_children: bool = True) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE name=?", (name,)).fetchone()
        return self._job(row, with_children=with_children) if row else None

    def schedulable_jobs(self) -> list[dict[str, Any]]:
        """Every job the scheduler may fire (enabled, not a child); with its scheduling state."""
        rows = self.db.execute("SELECT * FROM jobs WHERE disabled=0 AND parent_job='' AND schedule != ''").fetchall()
        return [self._job(row, with_children=False) for row in rows]

    def _job(self, row: sqlite3.Row, *, with_children: bool = True) -> dict[str, Any]:
        job = json.loads(row["body"])
        children = (
            []
            if not with_children
            else [
                r[0] for r in self.db.execute("SELECT name FROM jobs WHERE parent_job=? ORDER BY name", (row["name"],))
            ]
        )
        job.update(
            id=row["name"],
            success_count=row["success_count"],
            error_count=row["error_count"],
            skipped_count=row["skipped_count"],
            missed_count=row["missed_count"],
            last_success=row["last_success"],
            last_error=row["last_error"],
            status=row["status"],
            next=row["next"],
            dependent_jobs=children or None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
        job["_last_scheduled_ms"] = row["last_scheduled_ms"]
        return job

    def counts(self) -> dict[str, int]:
        row = self.db.execute(
            "SELECT COUNT(*), SUM(status='success'), SUM(status='failed'), SUM(status=''), SUM(disabled) FROM jobs"
        ).fetchone()
        return {
            "total": row[0],
            "success": row[1] or 0,
            "failed": row[2] or 0,
            "untriggered": row[3] or 0,
            "disabled": row[4] or 0,
        }

    # -- executions --------------------------------------------------------------------------
    def run_counts_since(self, since: str) -> dict[str, int]:
        """Executions started at or after ``since`` (RFC 3339 UTC), by status.

        With an index on ``executions(started_at, status)`` this is one covering range scan;
        without it, it walks the ``(job, started_at)`` index once per job (each row then costs a
        table lookup for its status: about 1.5 s for 600,000 runs in the window).
        """
        if self._has_index("executions", "executions_started_status"):
            sql = "SELECT status, COUNT(*) FROM executions WHERE started_at >= ? GROUP BY status"
        else:
            sql = (
                "SELECT e.status, COUNT(*) FROM jobs j JOIN executions e ON e.job = j.name AND e.started_at >= ?"
                " GROUP BY e.status"
            )
        return {status: count for status, count in self.db.execute(sql, (since,)).fetchall()}

    def _has_index(self, table: str, name: str) -> bool:
        return any(row[1] == name for row in self.db.execute(f"PRAGMA index_list({table})"))

    def list_executions(
        self,
        job: str,
        *,
        sort: str = "id",
        order: str = "DESC",
        start: int = 0,
        end: int | None = None,
        output_size_limit: int | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        column = EXECUTION_SORTS.get(sort)
        if column is None:
            raise QueryError(f"_sort must be one of {', '.join(sorted(EXECUTION_SORTS))}")
        offset, limit = _page(start, end)
        total = self.db.execute("SELECT COUNT(*) FROM executions WHERE job=?", (job,)).fetchone()[0]
        direction = _order(order)
        rows = self.db.execute(
            f"SELECT * FROM executions WHERE job=? ORDER BY {column} {direction}, id {direction} LIMIT ? OFFSET ?",
            (job, limit, offset),
        ).fetchall()
        return [execution_json(row, output_size_limit) for row in rows], total

    def get_execution(self, job: str, execution_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM executions WHERE job=? AND id=?", (job, execution_id)).fetchone()
        return execution_json(row) if row else None

    def running_executions(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM executions WHERE status='running' ORDER BY started_at").fetchall()
        return [execution_json(row) for row in rows]

    def settled_results(self, refs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Which (job, execution id) pairs need no more reports: final record committed, or job gone.

        One query per 400 pairs: a node lists every result it holds in each heartbeat, hundreds a
        second at high launch rates."""
        settled: list[tuple[str, str]] = []
        for start in range(0, len(refs), 400):
            chunk = refs[start : start + 400]
            values = ",".join("(?,?)" for _ in chunk)
            rows = self.db.execute(
                f"""WITH refs(job, id) AS (VALUES {values})
                    SELECT refs.job, refs.id FROM refs
                    LEFT JOIN jobs j ON j.name = refs.job
                    LEFT JOIN executions e ON e.job = refs.job AND e.id = refs.id
                    WHERE j.name IS NULL OR (e.status IS NOT NULL AND e.status != 'running')""",
                [value for pair in chunk for value in pair],
            )
            settled += [(row[0], row[1]) for row in rows]
        return settled

    def nodes_of_attempt(self, job: str, run_id: str, attempt: int) -> list[str]:
        """The nodes that ran one attempt of a run."""
        rows = self.db.execute(
            "SELECT DISTINCT node FROM executions WHERE job=? AND run_id=? AND attempt=?", (job, run_id, attempt)
        )
        return [r[0] for r in rows]

    def launch_started(self, run_id: str) -> bool:
        """Has any execution record of this run been committed (even if trimmed since)?"""
        row = self.db.execute("SELECT 1 FROM launches WHERE run_id=? AND started=1 LIMIT 1", (run_id,)).fetchone()
        return row is not None

    def unstarted_launches_since(self, since_ms: int) -> list[dict[str, Any]]:
        """Committed launches no execution record has reported on yet."""
        rows = self.db.execute("SELECT * FROM launches WHERE scheduled_ms >= ? AND started = 0", (since_ms,)).fetchall()
        return [dict(row) for row in rows]

    def nodes(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM nodes ORDER BY name").fetchall()
        return [{**dict(row), "tags": json.loads(row["tags"]), "is_server": bool(row["is_server"])} for row in rows]

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default


def execution_json(row: Mapping[str, Any], output_size_limit: int | None = None) -> dict[str, Any]:
    """An execution as the API shows it (Dkron's field names, plus status/run_id/error)."""
    output = row["output"] or ""
    truncated = bool(row["output_truncated"])
    if output_size_limit is not None and output_size_limit >= 0 and len(output) > output_size_limit:
        output = output[len(output) - output_size_limit :] if output_size_limit else ""
        truncated = True
    return {
        "id": row["id"],
        "job_name": row["job"],
        "run_id": row["run_id"],
        "group": row["grp"],
        "attempt": row["attempt"],
        "node_name": row["node"],
        "kind": row["kind"],
        "scheduled_at": row["scheduled_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "status": row["status"],
        "success": bool(row["success"]),
        "error": row["error"],
        "exit_code": row["exit_code"],
        "output": output,
        "output_truncated": truncated,
    }
