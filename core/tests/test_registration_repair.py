"""A node whose registration could not be committed is registered again by the leader.

An agent that registers while the servers have no quorum yet (the cluster is still forming)
is accepted by the leader in memory, so its heartbeats succeed and it never registers again.
Its registration must still reach the replicated view (the followers' ``/v1/members``, and the
next leader's starting list): the leader's reaper writes it until the write succeeds. Seen in
CI as a follower whose ``/v1/members`` lacked both agents.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

from dkron.cluster.membership import Membership, Node
from dkron.cluster.reaper import Reaper
from dkron.contracts import ExecutorRegistry, ProcessorRegistry
from dkron.runner import Runner
from dkron.store.queries import Reader
from dkron.store.state import StateMachine


def test_the_reaper_commits_registrations_that_failed(tmp_path: Path) -> None:
    state = StateMachine(str(tmp_path / "state.db"))
    reader = Reader(str(tmp_path / "state.db"))
    index = itertools.count(1)
    lock = threading.Lock()
    quorum = False

    def register(node: Node) -> bool:  # what the agent's persist_node does, against the real store
        if not quorum:
            return False
        with lock:
            state.apply(
                next(index),
                "upsert_node",
                {
                    "name": node.name,
                    "rpc_addr": node.rpc_addr,
                    "tags": node.tags,
                    "is_server": node.is_server,
                    "version": node.version,
                    "now": "2026-11-30T00:00:00Z",
                },
            )
        return True

    membership = Membership()
    agent = membership.heartbeat("a1", "127.0.0.1:7001", {"pool": "web"}, version="0.1")
    agent.registered = register(agent)  # the Register handler: no quorum yet
    runner = Runner("s1", ExecutorRegistry(), ProcessorRegistry(), record=lambda ex: None)
    records: list[dict[str, Any]] = []
    reaper = Reaper(
        node_name="s1",
        membership=membership,
        reader=reader,
        runner=runner,
        record=records.append,
        is_leader=lambda: True,
        grace=5.0,
        register=register,
    )
    try:
        reaper.reap()
        assert [n.name for n in membership.unregistered()] == ["a1"]
        assert reader.nodes() == []

        quorum = True
        reaper.reap()
        assert membership.unregistered() == []
        assert [(n["name"], n["tags"], n["status"]) for n in reader.nodes()] == [("a1", {"pool": "web"}, "alive")]

        # A next leader starts from the replicated view: every node in it is registered.
        successor = Membership()
        successor.reset(reader.nodes())
        assert successor.unregistered() == []
    finally:
        runner.shutdown(0)
    assert records == []
