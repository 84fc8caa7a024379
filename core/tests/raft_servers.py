"""Real ``RaftNode`` servers on loopback inside the test process, for Raft behaviour tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dkron.localcluster import wait_for
from dkron.store.raft import RaftConfig, RaftNode
from dkron.store.state import StateMachine
from dkron.testing import free_port

Listener = Callable[[str, dict[str, Any], Any], None]


@contextmanager
def raft_servers(base: Path, count: int = 3, listener: Listener | None = None) -> Iterator[list[RaftNode]]:
    """``count`` servers that know each other from the start; all destroyed on exit."""
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    nodes: list[RaftNode] = []
    try:
        for i, addr in enumerate(addrs):
            data_dir = base / f"s{i}"
            data_dir.mkdir()
            state = StateMachine(str(data_dir / "state.db"))
            if listener is not None:
                state.listeners.append(listener)
            partners = tuple(a for a in addrs if a != addr)
            nodes.append(RaftNode(RaftConfig(data_dir=str(data_dir), self_addr=addr, partners=partners), state))
        yield nodes
    finally:
        for node in nodes:
            node.destroy()


def sole_leader(nodes: list[RaftNode]) -> RaftNode | None:
    leaders = [node for node in nodes if node.is_leader]
    return leaders[0] if len(leaders) == 1 else None


def settled_leader(nodes: list[RaftNode]) -> RaftNode:
    """Wait for one leader, commit an entry through it, and wait until every server applied it."""
    leader = wait_for(lambda: sole_leader(nodes), 10, "a leader")
    leader.write("noop", {})
    wait_for(lambda: all(node.raftLastApplied >= leader.raftLastApplied for node in nodes), 5, "replication")
    return leader


def terms(nodes: list[RaftNode]) -> set[int]:
    return {node.getStatus()["raft_term"] for node in nodes}
