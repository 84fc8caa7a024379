"""Stopping a whole cluster at once is quick (3 servers + 1 agent, real processes).

The followers go first, then the leader and the agent get SIGTERM together, as when an operator
stops every node for maintenance. The leader has no quorum left, so nothing it would commit can
commit. It must not wait for that: the agent's ``Leave`` used to hold the leader's exit for the
5 s commit timeout and the agent's for 3 s, and the leader waited 2 s more to hand its
leadership to servers that were gone.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dkron.localcluster import LocalCluster, Node

pytestmark = pytest.mark.slow


def _stop_followers(cluster: LocalCluster) -> Node:
    """Start the cluster, stop both followers (one after the other); return the leader, alone."""
    cluster.start(timeout=120)
    leader = cluster.wait_ready(60)
    for follower in (s for s in cluster.servers if s is not leader):
        follower.stop(20)
    return leader


def test_a_leader_and_agent_stopped_after_the_followers_exit_at_once(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, agents={"a1": {"pool": "web"}}) as cluster:
        leader = _stop_followers(cluster)
        agent = cluster.agents[0]
        threads = [threading.Thread(target=node.stop, args=(20,)) for node in (leader, agent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)
        stops = {node.name: node.last_stop for node in (leader, agent)}
    for name, stop in stops.items():
        assert stop.get("graceful") and stop.get("rc") == 0, (name, stop)
    assert stops[agent.name]["seconds"] < 2.0, stops  # was 3.1 s
    assert stops[leader.name]["seconds"] < 3.0, stops  # was 5.1 s


def test_an_agent_leaving_a_leader_cut_off_from_its_quorum_exits_at_once(tmp_path: Path) -> None:
    # The leader keeps running: the agent's Leave reaches a server that is not stopping but cannot
    # commit. That is the race above when the agent's SIGTERM is handled before the leader's.
    with LocalCluster(tmp_path, agents={"a1": {"pool": "web"}}) as cluster:
        _stop_followers(cluster)
        agent = cluster.agents[0]
        agent.stop(20)
        stop = agent.last_stop
    assert stop.get("graceful") and stop.get("rc") == 0, stop
    assert stop["seconds"] < 2.0, stop
