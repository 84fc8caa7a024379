"""A server that loses touch with a live leader cannot depose it (PreVote); real failures still elect.

Three real ``RaftNode`` servers on loopback in this process. The "cut" drops every message between
one follower and the leader inside the follower's transport, both ways, while both keep reaching
the third server: a partial partition, as when a server starts before the leader has dialled it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from raft_servers import raft_servers, settled_leader, sole_leader, terms

from dkron.localcluster import wait_for
from dkron.store.raft import RaftNode


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[RaftNode]]:
    with raft_servers(tmp_path) as nodes:
        yield nodes


def cut(server: RaftNode, peer: RaftNode) -> None:
    """Drop every message between ``server`` and ``peer`` (in ``server``'s transport, both ways)."""
    transport = server._SyncObj__transport  # type: ignore[attr-defined]
    peer_id = peer.selfNode.id
    send, deliver = transport.send, transport._onMessageReceivedCallback

    def send_unless_cut(node: Any, message: Any) -> bool:
        return False if node.id == peer_id else send(node, message)

    def deliver_unless_cut(node: Any, message: Any) -> None:
        if node.id != peer_id:
            deliver(node, message)

    transport.send = send_unless_cut
    transport._onMessageReceivedCallback = deliver_unless_cut


def test_a_follower_cut_off_from_the_leader_does_not_depose_it(servers: list[RaftNode]) -> None:
    leader = settled_leader(servers)
    term = leader.getStatus()["raft_term"]
    cut_off, other = [node for node in servers if node is not leader]
    cut(cut_off, leader)

    time.sleep(3)  # 7-15 of the cut-off server's election timeouts
    assert leader.is_leader, "a follower that lost touch with a live leader deposed it"
    held = terms(servers)
    assert held == {term}, f"elections were held (terms {held}, was {term})"
    # The leader and the third server still commit (write raises if it cannot).
    leader.write("noop", {"after": "cut"})
    wait_for(lambda: other.raftLastApplied >= leader.raftLastApplied, 5, "the connected follower to apply")


def test_a_dead_leader_is_replaced_and_a_transfer_moves_leadership(servers: list[RaftNode]) -> None:
    leader = settled_leader(servers)
    survivors = [node for node in servers if node is not leader]
    started = time.monotonic()
    leader.destroy()
    new = wait_for(lambda: sole_leader(survivors), 5, "a new leader after the old one died")
    elected_after = time.monotonic() - started
    assert elected_after < 2.0, f"electing a new leader took {elected_after:.2f}s"
    new.write("noop", {"by": "new leader"})

    # A transfer is an election the leader asked for: it skips the pre-vote, and the others,
    # which heard the leader a moment ago, still vote.
    other = next(node for node in survivors if node is not new)
    new.transferLeadership(other.selfNode)
    wait_for(lambda: other.is_leader, 3, "leadership to move to the transfer's target")
