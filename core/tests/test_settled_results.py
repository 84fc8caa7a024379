"""Which results a node may stop re-sending: the leader's answer to every heartbeat."""

from __future__ import annotations

from dkron.store.queries import Reader
from dkron.store.state import StateMachine

NOW = "2026-01-01T00:00:00.000Z"


def test_final_records_and_deleted_jobs_are_settled_running_and_unknown_ones_not(tmp_path) -> None:
    path = str(tmp_path / "state.db")
    sm = StateMachine(path)
    job = {"name": "j", "displayname": "", "schedule": "@every 1s", "executor": "shell", "disabled": False}
    sm.apply(1, "put_job", {"job": {**job, "parent_job": "", "metadata": {}}, "now": NOW})
    executions = [
        {"id": f"{i}", "job_name": "j", "status": "success", "started_at": NOW, "finished_at": NOW} for i in range(900)
    ]
    executions.append({"id": "live", "job_name": "j", "status": "running", "started_at": NOW})
    sm.apply(2, "record", {"executions": executions, "keep_per_job": 1000})

    refs = [("j", f"{i}") for i in range(900)] + [("j", "live"), ("j", "never-recorded"), ("gone", "1")]
    settled = Reader(path).settled_results(refs)
    # Across query chunks (400 pairs each); a deleted job's results are settled too.
    assert len(settled) == 901
    assert set(settled) == {("j", f"{i}") for i in range(900)} | {("gone", "1")}
