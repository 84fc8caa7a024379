"""Recovery paths that need a cluster with unusual timings: 3 servers + 1 agent.

* A leader that dies after it received a result but before it committed it: the agent keeps
  the result until a leader confirms it committed, and sends it again to the next one. The
  servers commit results only every 4 s here, so that window is wide enough to hit.
* A server that was down while the others compacted their Raft logs past its position: it
  receives only the snapshot marker from Raft and fetches a copy of the state database from a
  peer. The servers compact every 40 entries here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dkron.localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    env = {"DKRON_RECORD_FLUSH_INTERVAL": "4", "DKRON_RAFT_COMPACTION_ENTRIES": "40"}
    with LocalCluster(tmp_path_factory.mktemp("recovery"), agents={"a1": {"pool": "web"}}, server_env=env) as c:
        c.start(timeout=120)
        yield c


def test_result_received_by_a_leader_that_dies_before_committing_it_is_not_lost(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    c = cluster
    c.heal()
    job = "late-commit"
    done = tmp_path / "done"
    c.create_job(
        {
            "name": job,
            "schedule": "@manually",
            "tags": {"pool": "web"},
            "executor_config": {"command": f'echo "finished $DKRON_RUN_ID"; touch {done}'},
        }
    )
    try:
        for _attempt in range(3):
            leader = c.leader()
            done.unlink(missing_ok=True)
            answer = leader.post(f"/v1/jobs/{job}/run", timeout=10)
            assert answer.status == 202, answer
            execution_id = answer.json()["execution_id"]
            wait_for(done.exists, 15, "the run to finish on the agent")
            # The stream has ended once the leader no longer shows the run as busy: the result
            # is then in the leader's memory, and committed within 4 s.
            wait_for(
                lambda: all(e["id"] != execution_id for e in leader.get("/v1/busy").json()),  # noqa: B023
                10,
                "the run's stream to end",
            )
            stored = leader.get(f"/v1/jobs/{job}/executions/{execution_id}").json()
            if stored.get("status") in (None, "running"):
                break  # not committed yet: the window under test
        else:
            pytest.fail("the leader committed the result before it could be killed, three times")
        leader.kill9()

        def final() -> dict | None:
            found = c.api().get(f"/v1/jobs/{job}/executions/{execution_id}", timeout=5)
            return found.json() if found.status == 200 and found.json()["status"] != "running" else None

        ex = wait_for(final, 40, "the run's result to be recorded through the new leader")
        assert ex["status"] == "success", ex
        assert "finished " in ex["output"], ex
        assert ex["node_name"] == "a1", ex
        # The path under test was taken: the agent had to send the result again.
        assert "sending it again" in c.node("a1").log(20000), c.node("a1").log()
    finally:
        c.delete_job(job)


def test_server_down_across_log_compaction_fetches_the_state_and_catches_up(cluster: LocalCluster) -> None:
    c = cluster
    c.heal()
    follower = c.followers()[0]
    follower.stop()
    names = [f"compacted-{i:03d}" for i in range(120)]
    try:
        for name in names:  # one Raft entry each: three compactions' worth
            c.create_job({"name": name, "schedule": "@manually", "executor_config": {"command": "true"}})
        follower.start()

        def caught_up() -> bool:
            health = follower.get("/health", timeout=3)
            listed = follower.get("/v1/jobs?q=compacted-&_end=1000", timeout=5)
            return health.status == 200 and listed.status == 200 and len(listed.json()) == len(names)

        wait_for(caught_up, 60, f"{follower.name} to hold every job created while it was down")
        assert "installed a copy of the state" in follower.log(50000), follower.log()
        # And it keeps applying new entries after the install.
        c.create_job({"name": "after-install", "schedule": "@manually", "executor_config": {"command": "true"}})
        wait_for(lambda: follower.get("/v1/jobs/after-install").status == 200, 20, "a write after the install")
        names.append("after-install")
    finally:
        for name in names:
            c.delete_job(name)
