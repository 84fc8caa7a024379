"""A pending retry is a committed record: it survives the loss of the leader that saw the failure.

3 servers + 1 agent as real processes. The job's first attempt fails on the agent; the leader is
killed (-9) while the retry waits for its backoff; the new leader runs the retry, which
succeeds, so the run counts as a success and its child runs. Dkron keeps the retry in a
sleeping goroutine of the old leader and loses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cluster_support import Cluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("retry-failover"), agents={"a1": {"pool": "web"}}) as c:
        c.start(timeout=120)
        yield c


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_a_pending_retry_survives_a_leader_kill(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    marker = tmp_path / "failed-once"
    c.create_job(
        {
            "name": "retry-across-failover",
            "schedule": "@manually",
            "tags": {"pool": "web"},
            "retries": 2,
            "retry_backoff": "8s",  # the retry waits 4-8 s: time to kill the leader
            "executor_config": {"command": f"if [ -f {marker} ]; then echo second; else touch {marker}; exit 1; fi"},
        }
    )
    c.create_job(
        {
            "name": "after-failover-child",
            "schedule": "",
            "parent_job": "retry-across-failover",
            "tags": {"pool": "web"},
            "executor_config": {"command": "echo child"},
        }
    )
    old = c.leader()
    started = old.post("/v1/jobs/retry-across-failover/run")
    assert started.status == 202, started
    run_id = started.json()["run_id"]

    def first_failed() -> dict | None:
        rows = c.executions("retry-across-failover", via=old)
        return rows[0] if rows and rows[0]["status"] == "failed" else None

    first = wait_for(first_failed, 15, "the first attempt to fail")
    assert first["attempt"] == 1 and first["node_name"] == "a1", first
    for server in c.servers:  # the pending retry is a committed record, visible on every server
        pending = wait_for(
            lambda s=server: s.get("/v1/jobs/retry-across-failover/next").json()["pending"], 5, f"pending on {server}"
        )
        assert [(p["kind"], p["attempt"], p["run_id"]) for p in pending] == [("retry", 2, run_id)], pending
    old.kill9()
    killed_at = time.time()
    new = c.leader(timeout=30, exclude=[old.name])

    def retried() -> list[dict] | None:
        rows = c.executions("retry-across-failover", via=new)
        return rows if len(rows) == 2 and rows[1]["status"] == "success" else None

    rows = wait_for(retried, 30, "the retry to run under the new leader")
    second = rows[1]
    assert second["attempt"] == 2 and second["run_id"] == run_id and second["kind"] == "retry", rows
    assert ts(second["started_at"]) >= ts(first["finished_at"]) + 3.9, "the backoff was not honoured"
    assert ts(second["started_at"]) >= killed_at, "the retry ran before the old leader died"
    print(f"\nretry ran {ts(second['started_at']) - killed_at:.1f}s after the leader was killed (new: {new.name})")
    assert new.get("/v1/jobs/retry-across-failover").json()["status"] == "success"
    child = wait_for(
        lambda: [e for e in c.executions("after-failover-child", via=new) if e["status"] == "success"],
        15,
        "the child to run after the parent's successful retry",
    )
    assert len(child) == 1 and child[0]["kind"] == "dependent", child
    time.sleep(2)
    assert len(c.executions("retry-across-failover", via=new)) == 2, "a run was retried twice"
