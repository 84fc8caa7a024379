"""The pre-start journal fix-up (pysyncobj.md §2e) and the restart it protects.

``fix_journal`` is exercised on real pysyncobj ``FileJournal`` files; the RaftNode tests build a
real node on a free loopback port, let it compact, then put the data dir into the state a
``kill -9`` leaves behind in the compaction window and restart from it.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal

from dkron.store.raft import MARKER_FORMAT, RaftConfig, RaftNode, fix_journal, read_marker
from dkron.store.state import StateMachine
from dkron.testing import free_port


def _entry(idx: int, term: int = 1) -> tuple[bytes, int, int]:
    return (b"\x01" + f"command-{idx}".encode(), idx, term)


def _write_journal(path: Path, entries: list[tuple[bytes, int, int]]) -> None:
    journal = FileJournal(str(path))
    for entry in entries:
        journal.add(*entry)
    journal.flush()
    journal._destroy()


def _read_journal(path: Path) -> list[tuple[bytes, int, int]]:
    journal = FileJournal(str(path))
    try:
        return [journal[i] for i in range(len(journal))]
    finally:
        journal._destroy()


def _write_marker(path: Path, prev: tuple, last: tuple, applied: int | None = None) -> None:
    marker = {
        "format": MARKER_FORMAT,
        "last": last,
        "prev": prev,
        "cluster": ["127.0.0.1:1"],
        "applied_index": last[1] if applied is None else applied,
    }
    path.write_bytes(pickle.dumps(marker))


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "raft.journal", tmp_path / "raft.marker"


def test_fixup_trims_the_prefix_the_marker_covers_and_keeps_every_later_entry(paths):
    journal, marker = paths
    entries = [_entry(i) for i in range(1, 101)]
    _write_journal(journal, entries)
    _write_marker(marker, prev=entries[48], last=entries[49])  # indexes 49 and 50

    dropped = fix_journal(str(journal), str(marker))

    assert dropped == 48
    kept = _read_journal(journal)
    assert [e[1] for e in kept] == list(range(49, 101))
    assert kept == entries[48:]  # commands and terms byte for byte, not only the indexes
    assert not os.path.exists(str(journal) + ".fixup")
    # Idempotent: a second start finds the journal already aligned.
    assert fix_journal(str(journal), str(marker)) == 0
    assert _read_journal(journal) == entries[48:]


def test_fixup_keeps_the_library_meta_file(paths):
    journal, marker = paths
    entries = [_entry(i) for i in range(1, 31)]
    _write_journal(journal, entries)
    meta = Path(str(journal) + ".meta")
    meta.write_bytes(b"commit-index-and-term")
    _write_marker(marker, prev=entries[9], last=entries[10])

    assert fix_journal(str(journal), str(marker)) == 9
    assert meta.read_bytes() == b"commit-index-and-term"


def test_marker_entries_already_at_the_start_leave_the_journal_untouched(paths):
    journal, marker = paths
    entries = [_entry(i) for i in range(49, 101)]
    _write_journal(journal, entries)
    _write_marker(marker, prev=entries[0], last=entries[1])
    before = journal.read_bytes()
    mtime = journal.stat().st_mtime_ns

    assert fix_journal(str(journal), str(marker)) == 0
    assert journal.read_bytes() == before
    assert journal.stat().st_mtime_ns == mtime


def test_marker_entries_missing_from_the_journal_leave_it_untouched(paths):
    journal, marker = paths
    entries = [_entry(i) for i in range(1, 101)]
    _write_journal(journal, entries)
    before = journal.read_bytes()
    # Index 150 is not in the journal at all; (49, 50) with another term is not either.
    _write_marker(marker, prev=_entry(149), last=_entry(150))
    assert fix_journal(str(journal), str(marker)) == 0
    assert journal.read_bytes() == before
    _write_marker(marker, prev=_entry(49, term=7), last=_entry(50, term=7))
    assert fix_journal(str(journal), str(marker)) == 0
    assert journal.read_bytes() == before


def test_no_marker_or_no_journal_is_a_no_op(paths):
    journal, marker = paths
    assert fix_journal(str(journal), str(marker)) == 0  # fresh data dir
    _write_journal(journal, [_entry(i) for i in range(1, 10)])
    before = journal.read_bytes()
    assert fix_journal(str(journal), str(marker)) == 0
    assert journal.read_bytes() == before
    assert not marker.exists()


def test_a_marker_of_an_unknown_format_is_refused_loudly(paths):
    journal, marker = paths
    _write_journal(journal, [_entry(i) for i in range(1, 10)])
    marker.write_bytes(pickle.dumps({"format": 99}))
    with pytest.raises(RuntimeError, match="unknown snapshot marker format"):
        fix_journal(str(journal), str(marker))


def test_leftover_fixup_files_from_a_crashed_fixup_are_ignored_and_cleaned(paths):
    journal, marker = paths
    entries = [_entry(i) for i in range(1, 101)]
    _write_journal(journal, entries)
    _write_marker(marker, prev=entries[48], last=entries[49])
    # A fix-up killed half way: a partial temp journal (with unrelated entries) and its meta.
    tmp = Path(str(journal) + ".fixup")
    _write_journal(tmp, [_entry(i, term=9) for i in range(500, 503)])
    Path(str(tmp) + ".meta").write_bytes(b"junk")

    assert fix_journal(str(journal), str(marker)) == 48

    assert _read_journal(journal) == entries[48:]  # nothing of the leftover leaked in
    assert not tmp.exists()
    assert not Path(str(tmp) + ".meta").exists()


def test_a_leftover_fixup_file_never_replaces_an_aligned_journal(paths):
    journal, marker = paths
    entries = [_entry(i) for i in range(49, 101)]
    _write_journal(journal, entries)
    _write_marker(marker, prev=entries[0], last=entries[1])
    _write_journal(Path(str(journal) + ".fixup"), [_entry(i, term=9) for i in range(1, 3)])

    assert fix_journal(str(journal), str(marker)) == 0
    assert _read_journal(journal) == entries


# -- RaftNode: the crash window of a real compaction ---------------------------------------


class _CapturingNode(RaftNode):
    """Copies the journal as it is when each snapshot marker is written, before truncation."""

    def __init__(self, *args, captured: list[bytes], **kwargs) -> None:
        self._captured = captured
        self._journal_path = os.path.join(args[0].data_dir, "raft.journal")
        super().__init__(*args, **kwargs)

    def _write_marker(self, filename, data):
        super()._write_marker(filename, data)
        with open(self._journal_path, "rb") as f:  # same page cache as the library's mmap
            self._captured.append(f.read())


def _node(data_dir: Path, state: StateMachine, port: int, cls=RaftNode, **kwargs) -> RaftNode:
    # The same address on every start: the marker records the membership.
    config = RaftConfig(data_dir=str(data_dir), self_addr=f"127.0.0.1:{port}", compaction_min_entries=50)
    node = cls(config, state, **kwargs)
    deadline = time.monotonic() + 10
    while not node.is_leader:
        assert time.monotonic() < deadline, "single node never became leader"
        time.sleep(0.01)
    return node


def _put(node: RaftNode, key: str, value: int) -> None:
    result = node.write("set_meta", {"key": key, "value": value})
    assert result == {"ok": True}, f"write of {key} was not applied: {result!r}"


def _missing(state: StateMachine, keys: dict[str, int]) -> list[str]:
    rows = dict(state.db.execute("SELECT key, value FROM meta").fetchall())
    return [k for k, v in keys.items() if rows.get(k) != str(v)]


def _crash_image(data_dir: Path, captured: list[bytes]) -> tuple[int, int]:
    """Rewrite the journal as if the last truncation never ran; return (marker last, journal end)."""
    journal = data_dir / "raft.journal"
    _last, prev, _cluster, _applied = read_marker(str(data_dir / "raft.marker"))
    final = _read_journal(journal)
    assert final[0] == prev, "the last compaction's truncation did not complete"
    older_path = data_dir / "older.journal"
    older_path.write_bytes(captured[-1])  # at the last marker, before its truncation
    older = _read_journal(older_path)
    older_path.unlink()
    untruncated = [e for e in older if e[1] < final[0][1]] + final
    assert [e[1] for e in untruncated] == list(range(untruncated[0][1], untruncated[-1][1] + 1))
    assert untruncated[0][1] < prev[1], "the image must reach back before the marker"
    journal.unlink()
    _write_journal(journal, untruncated)
    return _last[1], final[-1][1]


def test_restart_in_the_compaction_crash_window_keeps_every_write_and_index(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db = str(data / "state.db")
    captured: list[bytes] = []
    port = free_port()
    state = StateMachine(db)
    node = _node(data, state, port, _CapturingNode, captured=captured)
    written = {}
    try:
        for i in range(300):
            _put(node, f"k{i}", i)
            written[f"k{i}"] = i
        time.sleep(0.3)  # let the last truncation run
    finally:
        node.destroy_synchronous()
    applied = state.applied_index()
    state.close()
    assert len(captured) >= 4, "compaction every 50 entries should have written several markers"

    marker_last, journal_end = _crash_image(data, captured)
    # The interesting case: entries applied after the marker, which a cleared journal would lose.
    assert marker_last < applied <= journal_end

    state = StateMachine(db)
    node = _node(data, state, port)
    try:
        assert not _missing(state, written)
        # The log is re-applied over a few ticks after the restart (each a replay the database skips).
        deadline = time.monotonic() + 10
        while node.status()["last_applied"] < applied and time.monotonic() < deadline:
            time.sleep(0.02)
        status = node.status()
        assert status["last_applied"] >= applied, status
        # New writes must get fresh indexes: a journal cut back to the marker would hand out
        # indexes the database has already applied, and those writes would be skipped.
        for i in range(300, 360):
            _put(node, f"k{i}", i)
            written[f"k{i}"] = i
        assert not _missing(state, written)
        assert state.applied_index() > applied
    finally:
        node.destroy_synchronous()
        state.close()

    # And once more from the files alone: everything, including the post-restart writes.
    state = StateMachine(db)
    node = _node(data, state, port)
    try:
        assert not _missing(state, written)
        _put(node, "after-second-restart", 1)
        assert state.db.execute("SELECT value FROM meta WHERE key='after-second-restart'").fetchone()[0] == "1"
    finally:
        node.destroy_synchronous()
        state.close()


class _KillPoints(RaftNode):
    """Records, for every compaction truncation, what the journal file holds at each moment a
    ``kill -9`` could land: before every write the journal code makes, and after the last."""

    def __init__(self, *args, truncations: list, **kwargs) -> None:
        self._truncations = truncations
        self._journal_path = Path(args[0].data_dir) / "raft.journal"
        self._images: list[bytes] | None = None
        super().__init__(*args, **kwargs)

    def snapshot(self) -> None:
        if self._images is not None:
            self._images.append(self._journal_path.read_bytes())

    def _SyncObj__deleteEntriesTo(self, to_idx: int) -> None:
        raft_log = self._SyncObj__raftLog
        before = [raft_log[i] for i in range(len(raft_log))]
        self._images = [self._journal_path.read_bytes()]
        try:
            super()._SyncObj__deleteEntriesTo(to_idx)
        finally:
            images, self._images = self._images, None
        images.append(self._journal_path.read_bytes())
        after = [raft_log[i] for i in range(len(raft_log))]
        self._truncations.append((before, after, images))


def test_a_kill_during_the_truncation_after_compaction_never_leaves_a_partial_journal(tmp_path, monkeypatch):
    """The on-disk journal must be the old one or the new one at every instant, never a prefix
    of the new one: a prefix drops entries the state database has already applied, and the
    next writes would then reuse their indexes and be skipped as replays."""
    import pysyncobj.journal

    data = tmp_path / "data"
    data.mkdir()
    truncations: list = []
    nodes: list[_KillPoints] = []
    original_write = pysyncobj.journal.ResizableFile.write

    def write(self, offset, values):
        for node in nodes:
            node.snapshot()
        return original_write(self, offset, values)

    monkeypatch.setattr(pysyncobj.journal.ResizableFile, "write", write)
    state = StateMachine(str(data / "state.db"))
    node = _node(data, state, free_port(), _KillPoints, truncations=truncations)
    nodes.append(node)
    try:
        for i in range(160):
            _put(node, f"k{i}", i)
        time.sleep(0.2)
    finally:
        node.destroy_synchronous()
        state.close()
    assert len(truncations) >= 2, "compaction every 50 entries should have truncated the journal"

    image_path = tmp_path / "image.journal"
    for before, after, images in truncations:
        assert after and after == before[len(before) - len(after) :]
        for image in images:
            image_path.write_bytes(image)
            on_disk = _read_journal(image_path)
            image_path.unlink()
            assert on_disk in (before, after), (
                f"a kill here leaves {len(on_disk)} entries "
                f"({[e[1] for e in on_disk][:3]}...), neither the old journal nor the truncated one"
            )


def test_a_state_database_ahead_of_the_raft_log_refuses_to_start(tmp_path):
    """A lost raft.journal next to a kept state.db would make new writes reuse applied indexes."""
    from dkron.store.raft import check_log_covers_state

    journal = tmp_path / "raft.journal"
    marker = tmp_path / "raft.marker"
    check_log_covers_state(str(journal), str(marker), 0)  # a new node: nothing applied, nothing needed
    with pytest.raises(RuntimeError, match=r"raft\.journal was lost or replaced"):
        check_log_covers_state(str(journal), str(marker), 5)
    log = FileJournal(str(journal))
    for idx in range(1, 8):
        log.add(b"x", idx, 1)
    log.flush()
    log._destroy()
    check_log_covers_state(str(journal), str(marker), 7)  # the log covers the state: fine
    with pytest.raises(RuntimeError, match="ends at 7"):
        check_log_covers_state(str(journal), str(marker), 9)
