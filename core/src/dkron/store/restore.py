"""The ``restore_jobs`` command: a whole backup applied in one transaction (all or nothing).

Jobs come parents first (the API orders them). Each is written like ``put_job``; the counters and
``last_*`` times a Dkron backup carries are merged as Dkron does (the larger of stored and given),
so a backup taken from one cluster and restored into another shows the same history numbers.
A refusal of any job (e.g. a parent missing) raises :class:`ApplyError`, which rolls back the
whole command: nothing of the backup is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dkron.store.state import StateMachine

#: Counters merged with MAX(stored, backup).
COUNTERS = ("success_count", "error_count", "skipped_count", "missed_count")
TIMES = ("last_success", "last_error")


def apply_restore(sm: StateMachine, payload: dict[str, Any]) -> dict[str, Any]:
    results = []
    for item in payload["jobs"]:
        job = item["job"]
        created = sm._put_job({"job": job, "now": payload["now"], "next": item.get("next"), "reset_schedule": True})[
            "created"
        ]
        counters = item.get("counters") or {}
        for column in COUNTERS:
            if counters.get(column):
                sm.db.execute(
                    f"UPDATE jobs SET {column}=MAX({column}, ?) WHERE name=?", (int(counters[column]), job["name"])
                )
        for column in TIMES:
            if counters.get(column):
                sm.db.execute(
                    f"UPDATE jobs SET {column}=MAX(COALESCE({column}, ''), ?) WHERE name=?",
                    (counters[column], job["name"]),
                )
        if counters.get("status") in ("success", "failed"):
            sm.db.execute("UPDATE jobs SET status=? WHERE name=? AND status=''", (counters["status"], job["name"]))
        results.append({"name": job["name"], "result": "created" if created else "updated"})
    return {"jobs": results}
