"""Notifications in a real cluster (3 servers + 2 agents): once per run, and no re-send after failover."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from test_notifications import Receiver

from dkron.localcluster import LocalCluster, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("notify-cluster")) as c:
        for server in c.servers:  # every server is configured alike; only the leader sends
            server.extra_args = [f"--webhook-endpoint={receiver.url}/hook"]
        c.start(timeout=120)
        yield c


def test_one_notification_per_run_over_two_nodes_and_none_again_after_failover(
    cluster: LocalCluster, receiver: Receiver
):
    job = {
        "name": "fanout",
        "schedule": "@manually",
        "tags": {"pool": "web"},  # both agents run each run
        "executor_config": {"command": "echo from $(hostname)"},
    }
    cluster.create_job(job)
    leader = cluster.api()
    started = leader.post("/v1/jobs/fanout/run", timeout=15)
    assert started.status == 202, started
    run_id = started.json()["run_id"]

    def both_done() -> list | None:
        executions = leader.get("/v1/jobs/fanout/executions").json()
        mine = [e for e in executions if e["run_id"] == run_id]
        return mine if len(mine) == 2 and all(e["status"] == "success" for e in mine) else None

    executions = wait_for(both_done, 30, "both agents ran the job")
    [hook] = receiver.wait(1)
    body = json.loads(hook["body"])
    assert body["run_id"] == run_id and body["status"] == "success"
    assert body["node"] == ",".join(sorted(e["node_name"] for e in executions)) == "a1,a2"
    time.sleep(2)  # the "notified" mark is committed within a second of the delivery
    assert len(receiver.requests) == 1  # one per run, not one per node

    leader.kill9()
    new_leader = cluster.leader(timeout=30, exclude=[leader.name])
    wait_for(lambda: new_leader.get("/health").status == 200, 30, "a new leader")
    time.sleep(3)  # the new leader looks for unmarked finished runs when it takes over
    assert len(receiver.requests) == 1, receiver.requests
