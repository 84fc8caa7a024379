"""Execution retention by count, applied by the state machine: trimmed in steps, never short."""

from __future__ import annotations

from dkron.store.state import StateMachine

NOW = "2026-01-01T00:00:00.000Z"


def test_history_is_trimmed_back_to_the_count_once_a_tenth_more_piled_up(tmp_path) -> None:
    sm = StateMachine(str(tmp_path / "state.db"))
    index = iter(range(1, 10_000))
    job = {"name": "j", "displayname": "", "schedule": "@every 1s", "executor": "shell", "disabled": False}
    sm.apply(next(index), "put_job", {"job": {**job, "parent_job": "", "metadata": {}}, "now": NOW})

    def finish(i: int) -> None:
        started = f"2026-01-01T00:00:{i:02d}.000Z"
        ex = {"id": f"{i:03d}", "job_name": "j", "status": "success", "success": True, "started_at": started}
        ex["finished_at"] = started
        running = {**ex, "id": "live", "status": "running", "success": False}
        sm.apply(next(index), "record", {"executions": [ex, running], "keep_per_job": 20})

    def kept() -> list[str]:
        rows = sm.db.execute("SELECT id FROM executions WHERE job='j' AND status != 'running' ORDER BY id")
        return [row[0] for row in rows]

    for i in range(22):
        finish(i)
    assert len(kept()) == 22  # up to 20 + 2 before a trim
    finish(22)
    assert kept() == [f"{i:03d}" for i in range(3, 23)]  # back to the newest 20
    assert sm.db.execute("SELECT status FROM executions WHERE id='live'").fetchone()[0] == "running"
