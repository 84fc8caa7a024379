"""pysyncobj wrapped so that it cannot lose data or let strangers in.

What this module fixes (see shared/reference/pysyncobj.md for the measurements):

* **Binding**: always bind the configured address (the library default is 0.0.0.0).
* **Authentication**: the cluster key becomes pysyncobj's ``password`` (Fernet on every frame);
  without it, anyone who reaches the port could run code through pickle.
* **Snapshots**: the SQLite state machine is the snapshot. The "dump" file pysyncobj writes at
  log compaction is a small marker (the last two log entries and the membership), so
  compaction is O(1) instead of rewriting all history.
* **Crash during compaction**: the library drops every journal entry after the dump index if
  the dump is newer than the journal's first entries. :func:`fix_journal` trims the journal to
  start at the marker's entries before the library sees it.
* **Single-node latency**: a lone leader waits a full tick (50 ms) to commit; we wake the loop.
* **Writes** always carry a deadline; "unknown outcome" is surfaced as such (commands are
  idempotent, so the caller may retry).
* **Elections**: a server calls one only after a pre-vote (:mod:`dkron.store.prevote`), so one
  that merely lost touch with a live leader cannot depose it.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjException, replicated
from pysyncobj.journal import FileJournal
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import TCPNode

from dkron.store.prevote import PreVoteMixin
from dkron.store.snapshot import install_database, installed_for
from dkron.store.state import StateMachine

log = logging.getLogger(__name__)

MARKER_FORMAT = 1
#: Raft entries stay below this (see the appendEntriesBatchSizeBytes comment in RaftNode).
MAX_ENTRY_BYTES = 16 * 1024 * 1024


class StoreUnavailable(Exception):
    """The write could not be committed (no leader, no quorum, timeout). Maybe applied if ``unknown``."""

    def __init__(self, message: str, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


@dataclass
class RaftConfig:
    data_dir: str
    self_addr: str
    partners: tuple[str, ...] = ()
    password: str | None = None
    # Measured on this 2-core machine class: 0.05/0.2/0.4 fails over in ~0.26 s with no
    # spurious elections under load; the default 0.1/0.4/1.4 takes 0.8-2 s.
    append_entries_period: float = 0.05
    raft_min_timeout: float = 0.2
    raft_max_timeout: float = 0.4
    compaction_min_entries: int = 20000
    compaction_min_time: int = 600


def _marker_paths(data_dir: str) -> tuple[str, str]:
    return os.path.join(data_dir, "raft.journal"), os.path.join(data_dir, "raft.marker")


def read_marker(path: str) -> tuple[Any, Any, Any, int]:
    with open(path, "rb") as f:
        marker = pickle.load(f)
    if marker.get("format") != MARKER_FORMAT:
        raise RuntimeError(f"unknown snapshot marker format in {path}")
    return marker["last"], marker["prev"], marker["cluster"], marker["applied_index"]


def fix_journal(journal_path: str, marker_path: str) -> int:
    """Trim the journal so that it starts at the marker's two entries; return entries dropped.

    Must run before the SyncObj is built. Without it, a crash between writing the marker and
    the library truncating its journal makes the next start discard every later entry.
    """
    if not (os.path.exists(journal_path) and os.path.exists(marker_path)):
        return 0
    last, prev, _cluster, _applied = read_marker(marker_path)
    journal = FileJournal(journal_path)
    try:
        entries = [journal[i] for i in range(len(journal))]
    finally:
        journal._destroy()
    for position in range(len(entries) - 1):
        if entries[position] == prev and entries[position + 1] == last:
            break
    else:
        return 0  # marker entries not in the journal: the library's own handling applies
    if position == 0:
        return 0
    _replace_journal(journal_path, entries[position:])
    log.warning("journal fix-up: dropped %d entries already covered by the snapshot marker", position)
    return position


def _replace_journal(journal_path: str, entries: list[Any]) -> None:
    """Write ``entries`` as a new journal file and rename it over ``journal_path``."""
    tmp = journal_path + ".fixup"
    for leftover in (tmp, tmp + ".meta"):
        if os.path.exists(leftover):
            os.remove(leftover)
    fresh = FileJournal(tmp)
    for entry in entries:
        fresh.add(*entry)
    fresh.flush()
    fresh._destroy()
    os.replace(tmp, journal_path)  # atomic: the old journal stays whole until this point
    if os.path.exists(tmp + ".meta"):
        os.remove(tmp + ".meta")


def _truncate_journal_atomically(journal: FileJournal, journal_path: str, entry_to: int) -> None:
    """Crash-safe replacement for ``FileJournal.deleteEntriesTo`` (the truncation after compaction).

    The library clears the journal in place and then re-adds the kept entries one by one, so a
    ``kill -9`` in between leaves an empty or partial journal: entries already applied to the
    state database vanish from the log, the next writes reuse their indexes and the state
    machine skips them as replays. Writing a new file and renaming it keeps the journal on disk
    either whole-old (fix_journal trims it at the next start) or whole-new.
    """
    keep = [journal[i] for i in range(entry_to, len(journal))]
    _replace_journal(journal_path, keep)
    reopened = FileJournal(journal_path)  # only its file and offset are taken; the meta stays ours
    previous = journal._FileJournal__journalFile  # type: ignore[attr-defined]
    journal._FileJournal__journalFile = reopened._FileJournal__journalFile  # type: ignore[attr-defined]
    journal._FileJournal__currentOffset = reopened._FileJournal__currentOffset  # type: ignore[attr-defined]
    journal._FileJournal__journal = keep  # type: ignore[attr-defined]
    previous._destroy()


def check_log_covers_state(journal_path: str, marker_path: str, applied: int, installed: int | None = None) -> None:
    """Refuse to start when the state database has applied entries the Raft log no longer has.

    That happens when ``raft.journal`` (or the whole log) was deleted or replaced by an older copy
    while ``state.db`` was kept: new entries would reuse indexes the database already applied and
    be skipped as replays, silently losing every write until the log caught up.
    """
    if applied <= 0:
        return
    last = 0
    if os.path.exists(marker_path):
        marker_last = read_marker(marker_path)[0][1]
        if installed is not None and installed == marker_last:
            # The database is a peer's copy installed for this marker and may be ahead of our
            # log until the leader resends those entries; they are committed ones, so skipping
            # them as replays is right.
            return
        last = max(last, marker_last)
    if os.path.exists(journal_path):
        journal = FileJournal(journal_path)
        try:
            if len(journal):
                last = max(last, journal[len(journal) - 1][1])
        finally:
            journal._destroy()
    if last < applied:
        raise RuntimeError(
            f"the state database has applied Raft entries up to {applied} but the Raft log in "
            f"{os.path.dirname(journal_path)} ends at {last}: raft.journal was lost or replaced. Restore it, "
            "or move state.db away to start this node empty (it then catches up from its peers)."
        )


class RaftNode(PreVoteMixin, SyncObj):
    """One server's Raft member; its replicated state is the SQLite :class:`StateMachine`."""

    def __init__(
        self,
        config: RaftConfig,
        state: StateMachine,
        on_state_change: Callable[[bool], None] | None = None,
        fetch_state: Callable[[int, str], bool] | None = None,
    ) -> None:
        # Everything set before super().__init__ is invisible to pysyncobj; with a custom
        # serializer it pickles nothing of ours anyway.
        self._state = state
        self._on_state_change = on_state_change
        #: Fetches a peer's database copy covering an index into a path (see snapshot.py).
        self._fetch_state = fetch_state
        self._raft_timeout = config.raft_max_timeout
        journal, marker = _marker_paths(config.data_dir)
        self._marker_path = marker
        fix_journal(journal, marker)
        check_log_covers_state(journal, marker, state.applied_index(), installed_for(state.path))
        conf = SyncObjConf(
            bindAddress=config.self_addr,
            password=config.password,
            journalFile=journal,
            fullDumpFile=marker,
            serializer=self._write_marker,
            deserializer=self._load_marker,
            appendEntriesUseBatch=False,
            # pysyncobj 0.3.17 sends an entry larger than this in chunks and flags the last chunk
            # by the command's length instead of the pickled entry's, so a follower can unpickle
            # a truncated entry. A large batch size keeps every entry on the single-message path;
            # the recorder and the scheduler keep entries far below it.
            appendEntriesBatchSizeBytes=MAX_ENTRY_BYTES,
            appendEntriesPeriod=config.append_entries_period,
            raftMinTimeout=config.raft_min_timeout,
            raftMaxTimeout=config.raft_max_timeout,
            connectionTimeout=3.5,
            connectionRetryTime=1.0,
            logCompactionMinEntries=config.compaction_min_entries,
            logCompactionMinTime=config.compaction_min_time,
            dynamicMembershipChange=True,
            commandsWaitLeader=True,
            onStateChanged=self._state_changed,
            # The library retries a taken port forever (a silent hang); give a restart ~10 s
            # for a port still held by a dying predecessor, then fail loudly.
            bindRetryTime=1.0,
            maxBindRetries=10,
        )
        #: A lease shorter than the earliest moment another server may call an election.
        self._lease = config.raft_min_timeout * 0.9
        # Followers refuse pre-votes while they heard the leader within this lease: the leader's
        # lease (has_lease) relies on no election being held within it.
        self._prevote_init(quiet=self._lease)
        self._last_tick = 0.0
        #: After a gap in ticks, only responses processed after this moment count for the lease.
        self._fresh_after = 0.0
        #: Set when the snapshot marker is ahead of the state database (see _load_marker).
        self.diverged = False
        restarted = state.applied_index() > 0
        super().__init__(config.self_addr, list(config.partners), conf)
        if restarted:
            # A server back from a restart gives the leader time to re-dial it (up to
            # connectionRetryTime) before it asks for a vote. PreVote already keeps it from
            # deposing a live leader; this spares the cluster its pre-vote rounds meanwhile. A
            # leader's message resets this deadline, and it still votes for others meanwhile.
            self._SyncObj__raftElectionDeadline = (  # type: ignore[attr-defined]
                monotonic_time() + conf.connectionRetryTime + config.raft_max_timeout
            )
        raft_log = self._SyncObj__raftLog  # type: ignore[attr-defined]
        if isinstance(raft_log, FileJournal):
            raft_log.deleteEntriesTo = functools.partial(_truncate_journal_atomically, raft_log, journal)
        deadline = time.monotonic() + conf.bindRetryTime * (conf.maxBindRetries + 1)
        while not self._SyncObj__transport.ready and self.tick_thread_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.addOnTickCallback(self._watch_ticks)
        if not self._SyncObj__transport.ready:
            self.destroy()
            raise RuntimeError(f"cannot bind the Raft port {config.self_addr}: address in use or not local")

    # -- snapshot marker -----------------------------------------------------------------------
    def _write_marker(self, filename: str, data: tuple[Any, Any, Any]) -> None:
        """Called by pysyncobj at compaction, on the tick thread: O(1), the DB is the snapshot."""
        last, prev, cluster = data
        marker = {
            "format": MARKER_FORMAT,
            "last": last,
            "prev": prev,
            "cluster": [getattr(node, "id", str(node)) for node in cluster],
            "applied_index": self._state.applied_index(),
        }
        with open(filename, "wb") as f:
            pickle.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())

    def _load_marker(self, filename: str) -> tuple[Any, Any, Any]:
        last, prev, cluster, _ = read_marker(filename)
        applied = self._state.applied_index()
        if applied < last[1] and not self._install_state(last[1]):
            # Our rows do not cover the snapshot and no peer could send a copy that does.
            self.diverged = True  # /health answers 503 "diverged" from now on
            log.critical(
                "state database is at index %d but the snapshot marker says %d: the data dir's "
                "state.db is missing entries; restore it or re-join this node empty",
                applied,
                last[1],
            )
        # Node objects, not ids: the library compares members with Node.__eq__.
        return last, prev, [TCPNode(address) for address in cluster]

    def _install_state(self, marker_index: int) -> bool:
        """Replace our database with a peer's copy that covers ``marker_index`` (tick thread)."""
        if self._fetch_state is None:
            return False
        incoming = self._state.path + ".incoming"
        started = monotonic_time()
        try:
            if not self._fetch_state(marker_index, incoming):
                return False
            install_database(incoming, self._state, marker_index)
        except (OSError, ValueError, sqlite3.Error) as exc:
            log.error("could not install a peer's state copy: %s", exc)
            return False
        finally:
            # The tick thread was busy: do not mistake the pause for a dead leader.
            self._SyncObj__raftElectionDeadline = monotonic_time() + self._raft_timeout  # type: ignore[attr-defined]
        self.diverged = False
        log.info("state copy installed in %.2fs", monotonic_time() - started)
        for listener in self._state.listeners:
            listener("snapshot_installed", {"marker_index": marker_index}, None)
        return True

    # -- the one replicated command ----------------------------------------------------------
    @replicated
    def apply(self, command: str, payload: dict[str, Any]) -> Any:
        # Runs on the tick thread of every server once the entry commits. A single method keeps
        # pysyncobj's method ids stable across versions (they come from sorted method names).
        result = self._state.apply(self.raftLastApplied + 1, command, payload)
        self._heartbeat_if_due()
        return result

    def _heartbeat_if_due(self) -> None:
        """A leader applying a backlog of entries sends its heartbeat between two of them.

        pysyncobj applies every committed entry in one pass and sends append-entries only after
        it. Under a burst (thousands of records committed at once on a loaded host) the pass
        took 0.3 s, longer than the followers' election timeout, and a healthy leader was
        deposed in the middle of the burst (bench_cluster.py, section b). Sending from here is
        what the tick does after the pass anyway; only the moment is earlier.
        """
        if self._isLeader() and monotonic_time() >= self._SyncObj__newAppendEntriesTime:  # type: ignore[attr-defined]
            self._SyncObj__sendAppendEntries()  # type: ignore[attr-defined]

    def write(self, command: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        """Commit a command through Raft and return its result; raise :class:`StoreUnavailable`."""
        try:
            result = self.apply(command, payload, sync=True, timeout=timeout)
        except SyncObjException as exc:
            reason = exc.errorCode if hasattr(exc, "errorCode") else str(exc)
            unknown = reason in ("Timeout", FAIL_REASON.UNKNOWN_OUTCOME, FAIL_REASON.LEADER_CHANGED)
            raise StoreUnavailable(f"could not commit {command}: {reason}", unknown=unknown) from None
        return result

    # -- liveness fixes ----------------------------------------------------------------------
    def _checkCommandsToApply(self) -> None:
        super()._checkCommandsToApply()
        # A lone leader commits on its next tick; without a wake-up that is a full autoTick
        # period (50 ms per write, ~20 writes/s). Measured with this: ~0.08 ms.
        if not self.otherNodes and self.raftCommitIndex < self._SyncObj__getCurrentLogIndex():
            self._SyncObj__pipeNotifier.notify()

    def _state_changed(self, old: int, new: int) -> None:
        # Called on the tick thread: only hand the news over, never block here.
        if self._on_state_change is not None:
            self._on_state_change(new == 2)

    @property
    def is_leader(self) -> bool:
        return self._isLeader()

    def _watch_ticks(self) -> None:
        """On the tick thread: a long gap between ticks means this process was frozen (SIGSTOP,
        a VM pause) or starved. The replies queued meanwhile are about to be processed and would
        make the lease look fresh, so only replies processed some time after the gap count: by
        then the backlog is read (a later stall would be a new gap), and what arrives answers
        what this server sent after the gap. A new leader, if one was elected meanwhile, has
        made itself known through those answers (their higher term deposes this server)."""
        now = monotonic_time()
        if self._last_tick and now - self._last_tick > self._lease:
            self._fresh_after = now + 2 * self._lease
            log.warning(
                "this server did not run for %.2fs (frozen?): not dispatching until Raft settles", now - self._last_tick
            )
        self._last_tick = now

    def has_lease(self) -> bool:
        """True while this leader has heard from a majority within the minimum election timeout.

        Past that, another server may have been elected without us knowing (e.g. this process
        was frozen): a leader without a lease must not start runs.
        """
        now = monotonic_time()
        if not self._isLeader() or now < self._fresh_after:
            return False
        partners = self.otherNodes
        if not partners:
            return True
        last = self._SyncObj__lastResponseTime
        horizon = max(now - self._lease, self._fresh_after)
        fresh = 1 + sum(1 for node in partners if last.get(node, 0) > horizon)
        return fresh > (len(partners) + 1) / 2

    def leader_addr(self) -> str | None:
        leader = self._getLeader()
        return getattr(leader, "id", None) if leader is not None else None

    def connected_partners(self) -> set[str]:
        """Raft addresses of the other servers this one is connected to right now."""
        return {node.id for node in self.otherNodes if self.isNodeConnected(node)}

    def quorum_connected(self) -> bool:
        """True while this server is connected to enough others to commit (a majority with it)."""
        return 1 + len(self.connected_partners()) > (len(self.otherNodes) + 1) / 2

    def status(self) -> dict[str, Any]:
        return self.getStatus()
