"""Raft's PreVote (Ongaro's thesis, §9.6) for pysyncobj, which has none.

Without it, a server that stops hearing the leader while it still reaches another server raises
its term and calls an election; every server that sees the higher term steps down, and a healthy
leader is deposed. It happened when a cluster formed: the last server to start was connected to
a follower before the leader had dialled it (up to ``connectionRetryTime``), and 2 of 5 fresh
clusters changed leader within a second of electing one. A server cut off from the leader alone
(a one-way or partial partition) would keep doing it.

With PreVote, a server whose election timeout passed first asks the others whether they *would*
vote for it at the next term, without changing any term. A server says yes only if it has not
heard from a leader for most of the minimum election timeout, is not the leader, and the asker's
log is at least as up to date as its own. Only with a majority of yeses does the asker start the
real election (pysyncobj's, unchanged). A leadership transfer (``TimeoutNow``) skips the pre-vote:
the leader asked for that election.

Voting itself is pysyncobj's, so a server of an older version can still disrupt; servers of this
version never start an election that the others would not hold.
"""

from __future__ import annotations

import logging
from typing import Any

from pysyncobj import SyncObj
from pysyncobj.monotonic import monotonic as monotonic_time

log = logging.getLogger(__name__)

_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER


class PreVoteMixin(SyncObj):
    """Gate pysyncobj's elections behind a pre-vote round. Mix in before ``SyncObj``."""

    def _prevote_init(self, quiet: float) -> None:
        """Call before ``SyncObj.__init__`` (its tick thread may start at once).

        A server that heard from a leader less than ``quiet`` seconds ago refuses pre-votes: just
        under the minimum election timeout, so a live leader (heard every heartbeat) is never
        deposed and a dead one is replaced after one timeout."""
        self._prevote_quiet = quiet
        self._leader_heard = 0.0
        self._prevote_term = -1  # the term of the pre-vote round under way (-1: none)
        self._prevote_yes: set[str] = set()
        self._prevote_won = -1  # an election at this term may start

    # -- the candidate side: runs on the tick thread, before pysyncobj's tick ------------------
    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._gate_election()
        super()._onTick(timeToWait)

    def _gate_election(self) -> None:
        if self._SyncObj__raftState == _LEADER or not self.otherNodes:  # type: ignore[attr-defined]
            return
        if self._SyncObj__transferInProgress:  # type: ignore[attr-defined]
            return  # the leader asked for this election (TimeoutNow)
        now = monotonic_time()
        if self._SyncObj__raftElectionDeadline >= now or not self._SyncObj__connectedNodes:  # type: ignore[attr-defined]
            return
        term = self._SyncObj__raftCurrentTerm + 1  # type: ignore[attr-defined]
        if self._prevote_won == term:
            return  # a majority said yes: pysyncobj holds the election in this tick
        if self._prevote_term == term:
            log.debug("pre-vote for term %d not granted by a majority; asking again", term)
        self._prevote_term = term
        self._prevote_yes = {self.selfNode.id}
        request = {
            "type": "pre_vote",
            "term": term,
            "last_log_index": self._SyncObj__getCurrentLogIndex(),  # type: ignore[attr-defined]
            "last_log_term": self._SyncObj__getCurrentLogTerm(),  # type: ignore[attr-defined]
        }
        for node in self.otherNodes:
            self._SyncObj__transport.send(node, request)  # type: ignore[attr-defined]
        # Hold pysyncobj's election back until the answers come, or until the next timeout.
        self._SyncObj__raftElectionDeadline = now + self._SyncObj__generateRaftTimeout()  # type: ignore[attr-defined]

    # -- messages: runs on the tick thread ---------------------------------------------------
    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "pre_vote":
            self._answer_pre_vote(node, message)
            return
        if kind == "pre_vote_response":
            self._count_pre_vote(node, message)
            return
        if kind == "append_entries" and message["term"] >= self._SyncObj__raftCurrentTerm:  # type: ignore[attr-defined]
            self._leader_heard = monotonic_time()
        super()._SyncObj__onMessageReceived(node, message)  # type: ignore[misc]

    def _answer_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        last_term = self._SyncObj__getCurrentLogTerm()  # type: ignore[attr-defined]
        up_to_date = message["last_log_term"] > last_term or (
            message["last_log_term"] == last_term and message["last_log_index"] >= self._SyncObj__getCurrentLogIndex()  # type: ignore[attr-defined]
        )
        granted = (
            self._SyncObj__raftState != _LEADER  # type: ignore[attr-defined]
            and monotonic_time() - self._leader_heard >= self._prevote_quiet
            and message["term"] > self._SyncObj__raftCurrentTerm  # type: ignore[attr-defined]
            and up_to_date
        )
        self._SyncObj__transport.send(  # type: ignore[attr-defined]
            node, {"type": "pre_vote_response", "term": message["term"], "granted": granted}
        )

    def _count_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        if not message.get("granted") or message["term"] != self._prevote_term:
            return
        if self._SyncObj__raftCurrentTerm + 1 != self._prevote_term:  # type: ignore[attr-defined]
            return  # our term moved on since we asked
        self._prevote_yes.add(node.id)
        if len(self._prevote_yes) > (len(self.otherNodes) + 1) / 2:
            self._prevote_won = self._prevote_term
            self._SyncObj__raftElectionDeadline = 0  # type: ignore[attr-defined]
