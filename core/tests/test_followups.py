"""The state machine decides retries, dependent runs and ephemeral deletion deterministically.

Two independent state machines applying the same entries must end with the same follow-ups
(same ids and not-before times): that is what lets any server that becomes leader run them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dkron.store import followups
from dkron.store.state import StateMachine
from dkron.timing import next_fire, timing_for

NOW = "2026-01-01T00:00:00.000Z"


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "displayname": "",
        "schedule": "@manually" if not fields.get("parent_job") else "",
        "executor": "shell",
        "disabled": False,
        "parent_job": "",
        "metadata": {},
        **fields,
    }


def execution(job_name: str, run_id: str, attempt: int, status: str, node: str = "n1", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{1000 + attempt}-{node}",
        "job_name": job_name,
        "run_id": run_id,
        "attempt": attempt,
        "group": 1000,
        "node_name": node,
        "status": status,
        "success": status == "success",
        "started_at": "2026-01-01T00:00:01.000Z",
        "finished_at": None if status == "running" else "2026-01-01T00:00:02.000Z",
        **extra,
    }


class Machine:
    def __init__(self, path: Path) -> None:
        self.sm = StateMachine(str(path))
        self.index = 0

    def apply(self, command: str, payload: dict[str, Any]) -> Any:
        self.index += 1
        return self.sm.apply(self.index, command, payload)

    def rows(self) -> list[tuple]:
        return self.sm.db.execute(
            "SELECT id, job, attempt, kind, not_before_ms, grp FROM followups ORDER BY id"
        ).fetchall()


def setup(m: Machine) -> None:
    m.apply("put_job", {"job": job("p", retries=2, retry_backoff="10s"), "now": NOW})
    m.apply("put_job", {"job": job("ok", parent_job="p"), "now": NOW})
    m.apply("put_job", {"job": job("bad", parent_job="p", depends_on_status="failure"), "now": NOW})
    launch = {"job": "p", "scheduled_ms": 1, "kind": "manual", "node": "n1,n2", "run_id": "p@1", "execution_id": "1000"}
    m.apply("launch", {"launches": [launch], "proposal": "x", "now_ms": 0})


def test_two_servers_compute_the_same_retry_and_a_duplicate_report_changes_nothing(tmp_path):
    machines = [Machine(tmp_path / "a.db"), Machine(tmp_path / "b.db")]
    for m in machines:
        setup(m)
        # One of the two target nodes failed: the attempt is not over until the other reports.
        first = m.apply("record", {"executions": [execution("p", "p@1", 1, "failed", "n1")]})
        assert first["followups"] == []
        done = m.apply("record", {"executions": [execution("p", "p@1", 1, "success", "n2")]})
        assert done["followups"] == ["p@1#2"], done
        again = m.apply("record", {"executions": [execution("p", "p@1", 1, "failed", "n2")]})
        assert again["followups"] == []
    assert machines[0].rows() == machines[1].rows()
    (fid, name, attempt, kind, not_before, group) = machines[0].rows()[0]
    finished_ms = 1767225602000  # 2026-01-01T00:00:02Z
    assert (fid, name, attempt, kind, group) == ("p@1#2", "p", 2, "retry", 1000)
    assert finished_ms + 5_000 <= not_before <= finished_ms + 10_000  # equal jitter of 10 s


def test_after_the_last_retry_the_outcome_picks_the_children(tmp_path):
    m = Machine(tmp_path / "s.db")
    setup(m)
    for attempt in (1, 2, 3):
        record = {"executions": [execution("p", "p@1", attempt, "failed", n) for n in ("n1", "n2")]}
        if attempt > 1:  # retries are claimed (here on one node) before they run
            m.apply("claim_followups", {"claims": [{"id": f"p@1#{attempt}", "node": "n1"}], "proposal": "c"})
            record = {"executions": [execution("p", "p@1", attempt, "failed", "n1")]}
        result = m.apply("record", record)
    assert result["followups"] == ["bad@p@1#1"], result
    kinds = {row[0]: row[3] for row in m.rows()}
    assert kinds["bad@p@1#1"] == "dependent" and "ok@p@1#1" not in kinds


def test_a_killed_attempt_is_not_retried_and_an_ephemeral_success_deletes_the_job(tmp_path):
    m = Machine(tmp_path / "s.db")
    m.apply("put_job", {"job": job("k", retries=3), "now": NOW})
    m.apply("mark_runs", {"runs": [{"run_id": "k@1", "attempt": 1}], "now_ms": 0})
    assert m.apply("record", {"executions": [execution("k", "k@1", 1, "failed")]})["followups"] == []
    m.apply("put_job", {"job": job("e", ephemeral=True), "now": NOW})
    assert m.apply("record", {"executions": [execution("e", "e@1", 1, "success")]})["deleted"] == ["e"]
    assert m.sm.db.execute("SELECT COUNT(*) FROM jobs WHERE name='e'").fetchone()[0] == 0


def test_claims_are_fenced_by_epoch_and_owned_by_their_proposal(tmp_path):
    m = Machine(tmp_path / "s.db")
    setup(m)
    m.apply("record", {"executions": [execution("p", "p@1", 1, "failed", n) for n in ("n1", "n2")]})
    m.apply("set_epoch", {"epoch": 5})
    assert m.apply("claim_followups", {"claims": [{"id": "p@1#2", "node": "n1"}], "proposal": "a", "epoch": 4}) == {
        "accepted": [],
        "stale": True,
    }
    claim = {"claims": [{"id": "p@1#2", "node": "n2"}], "epoch": 5}
    assert m.apply("claim_followups", {**claim, "proposal": "b"})["accepted"] == ["p@1#2"]
    assert m.apply("claim_followups", {**claim, "proposal": "b"})["accepted"] == ["p@1#2"]  # a retried proposal
    assert m.apply("claim_followups", {**claim, "proposal": "c"})["accepted"] == []  # someone else's


def test_backoff_doubles_is_capped_and_jittered_deterministically():
    delays = [followups.backoff_ms(k, "r@1", 1000, 8000) for k in range(1, 7)]
    assert delays == [followups.backoff_ms(k, "r@1", 1000, 8000) for k in range(1, 7)]
    for k, delay in enumerate(delays, 1):
        raw = min(8000, 1000 * 2 ** (k - 1))
        assert raw / 2 <= delay <= raw, (k, delay)
    assert len({followups.backoff_ms(1, f"r@{i}", 1000, 8000) for i in range(20)}) > 10


def test_jitter_keeps_ticks_ordered_and_within_bounds():
    timing = timing_for({"name": "j", "schedule": "@every 10s", "jitter": "25s"})
    assert timing is not None
    fires, cursor = [], 0
    for _ in range(50):
        cursor = next_fire(timing, cursor)
        fires.append(cursor)
    assert fires == sorted(fires) and len(set(fires)) == 50
    assert all(0 <= f % 10_000 < 10_000 for f in fires)
    assert len({f // 10_000 for f in fires}) == 50, "one fire per tick, none skipped"


def test_a_result_delivered_without_its_group_still_gives_the_retry_the_runs_group(tmp_path):
    m = Machine(tmp_path / "s.db")
    setup(m)
    # As an agent reports with ExecutionDone after its stream broke: no group, no kind.
    bare = [{k: v for k, v in execution("p", "p@1", 1, "failed", n).items() if k != "group"} for n in ("n1", "n2")]
    assert m.apply("record", {"executions": bare})["followups"] == ["p@1#2"]
    assert m.rows()[0][5] == 1000


def test_a_lost_attempt_is_not_retried_but_counts_as_a_failure_for_children(tmp_path):
    m = Machine(tmp_path / "s.db")
    setup(m)
    record = [execution("p", "p@1", 1, "success", "n1"), execution("p", "p@1", 1, "lost", "n2")]
    assert m.apply("record", {"executions": record})["followups"] == ["bad@p@1#1"]
