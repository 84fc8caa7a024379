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
from raft_servers import raft_servers, settled_leader, terms

from dkron.localcluster import wait_for
from dkron.store.raft import RaftNode

SLOW_APPLY = 0.08
ENTRIES = 10  # 0.8 s of applying in one pass: twice the longest election timeout


def _slow(command: str, payload: dict[str, Any], result: Any) -> None:
    if payload.get("slow"):
        time.sleep(SLOW_APPLY)


@pytest.fixture
def servers(tmp_path: Path):
    with raft_servers(tmp_path, listener=_slow) as nodes:
        yield nodes


def test_a_leader_applying_a_long_backlog_is_not_deposed(servers: list[RaftNode]) -> None:
    leader = settled_leader(servers)
    term = leader.getStatus()["raft_term"]

    done: list[Any] = []
    for i in range(ENTRIES):  # submitted together: they commit together and apply in one pass
        leader.apply("noop", {"slow": True, "i": i}, callback=lambda result, error: done.append(error))
    target = leader.raftLastApplied + ENTRIES
    wait_for(lambda: len(done) == ENTRIES, 20, "the slow entries to apply on the leader")
    wait_for(lambda: all(node.raftLastApplied >= target for node in servers), 20, "the followers to apply them")

    assert leader.is_leader, "the leader lost its office while applying"
    held = terms(servers)
    assert held == {term}, f"an election was held while the leader was applying (terms {held}, was {term})"
