"""Job semantics across a real cluster: 3 servers + 1 agent as separate processes.

* ``concurrency: replace`` kills a run on another node (over gRPC) before starting the new one.
* A pending retry is a committed record: it survives the loss of the leader that saw the
  failure. The job's first attempt fails on the agent; the leader is killed (-9) while the retry
  waits for its backoff; the new leader runs the retry, which succeeds, so the run counts as a
  success and its child runs. Dkron keeps the retry in a sleeping goroutine of the old leader
  and loses it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from dkron.localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("retry-failover"), agents={"a1": {"pool": "web"}}) as c:
        c.start(timeout=120)
        yield c


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_replace_kills_the_run_on_another_node_first(cluster: LocalCluster) -> None:
    c = cluster
    c.create_job(
        {
            "name": "replace-remote",
            "schedule": "@manually",
            "tags": {"pool": "web"},
            "concurrency": "replace",
            "retries": 1,
            "executor_config": {"command": "sleep 30"},
        }
    )
    leader = c.leader()
    first = leader.post("/v1/jobs/replace-remote/run").json()
    wait_for(
        lambda: [e for e in leader.get("/v1/busy").json() if e["id"] == first["execution_id"]], 10, "the first run"
    )
    follower = c.followers()[0]
    second = follower.post("/v1/jobs/replace-remote/run")  # forwarded to the leader
    assert second.status == 202, second

    def replaced() -> dict | None:
        old = leader.get(f"/v1/jobs/replace-remote/executions/{first['execution_id']}").json()
        return old if old["status"] != "running" else None

    old = wait_for(replaced, 15, "the first run to be killed")
    assert old["status"] == "failed" and old["node_name"] == "a1" and "replaced" in old["error"] + old["output"], old
    now = wait_for(lambda: [e for e in leader.get("/v1/busy").json() if e["job_name"] == "replace-remote"], 10, "new")
    assert [e["run_id"] for e in now] == [second.json()["run_id"]], now
    forced = leader.post("/v1/jobs/replace-remote/run?force=true")  # force: no kill, both run
    assert forced.status == 202, forced
    both = wait_for(
        lambda: len([e for e in leader.get("/v1/busy").json() if e["job_name"] == "replace-remote"]) == 2, 10, "two"
    )
    assert both
    for e in [e for e in leader.get("/v1/busy").json() if e["job_name"] == "replace-remote"]:
        leader.post(f"/v1/jobs/replace-remote/executions/{e['id']}/kill")
    wait_for(lambda: not [e for e in leader.get("/v1/busy").json() if e["job_name"] == "replace-remote"], 10, "kills")
    time.sleep(1.5)
    attempts = [e["attempt"] for e in c.executions("replace-remote", via=leader)]
    assert attempts == [1, 1, 1], f"a killed or replaced run was retried: {attempts}"


def test_a_pending_retry_survives_a_leader_kill(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    marker = tmp_path / "failed-once"
    c.create_job(
        {
            "name": "retry-across-failover",
            "schedule": "@manually",
            "tags": {"pool": "web"},
            "retries": 2,
            "retry_backoff": "12s",  # the retry waits 6-12 s: time to kill the leader, even on a slow machine
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
    assert ts(second["started_at"]) >= ts(first["finished_at"]) + 5.9, "the backoff was not honoured"
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
