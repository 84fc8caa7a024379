"""A leader that applies a long backlog of committed entries keeps its followers.

pysyncobj applies every committed entry in one pass on its tick thread and sends append-entries
only after the pass. A pass longer than the followers' election timeout (0.2-0.4 s here) got a
healthy leader deposed in the middle of a burst. ``RaftNode`` heartbeats between entries.

Three real ``RaftNode`` servers on loopback in this process; each entry's apply is made slow
with a state listener that sleeps (which releases the GIL, so the three do not starve each
other).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dkron.localcluster import wait_for
from dkron.store.raft import RaftConfig, RaftNode
from dkron.store.state import StateMachine
from dkron.testing import free_port

SLOW_APPLY = 0.08
ENTRIES = 10  # 0.8 s of applying in one pass: twice the longest election timeout


def _slow(command: str, payload: dict[str, Any], result: Any) -> None:
    if payload.get("slow"):
        time.sleep(SLOW_APPLY)


@pytest.fixture
def servers(tmp_path: Path):
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes = []
    try:
        for i, addr in enumerate(addrs):
            data_dir = tmp_path / f"s{i}"
            data_dir.mkdir()
            state = StateMachine(str(data_dir / "state.db"))
            state.listeners.append(_slow)
            partners = tuple(a for a in addrs if a != addr)
            nodes.append(RaftNode(RaftConfig(data_dir=str(data_dir), self_addr=addr, partners=partners), state))
        yield nodes
    finally:
        for node in nodes:
            node.destroy()


def _leader(nodes: list[RaftNode]) -> RaftNode | None:
    leaders = [node for node in nodes if node.is_leader]
    return leaders[0] if len(leaders) == 1 else None


def test_a_leader_applying_a_long_backlog_is_not_deposed(servers: list[RaftNode]) -> None:
    leader = wait_for(lambda: _leader(servers), 10, "a leader")
    leader.write("noop", {})  # settled: every server has applied something
    wait_for(lambda: all(node.raftLastApplied >= leader.raftLastApplied for node in servers), 5, "replication")
    term = leader.getStatus()["raft_term"]

    done: list[Any] = []
    for i in range(ENTRIES):  # submitted together: they commit together and apply in one pass
        leader.apply("noop", {"slow": True, "i": i}, callback=lambda result, error: done.append(error))
    target = leader.raftLastApplied + ENTRIES
    wait_for(lambda: len(done) == ENTRIES, 20, "the slow entries to apply on the leader")
    wait_for(lambda: all(node.raftLastApplied >= target for node in servers), 20, "the followers to apply them")

    assert leader.is_leader, "the leader lost its office while applying"
    terms = {node.getStatus()["raft_term"] for node in servers}
    assert terms == {term}, f"an election was held while the leader was applying (terms {terms}, was {term})"
