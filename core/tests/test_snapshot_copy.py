"""Copying and installing the state database (what a server fetches after a log compaction)."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import pytest

from dkron.store.queries import Reader
from dkron.store.raft import MARKER_FORMAT, check_log_covers_state
from dkron.store.snapshot import copy_database, install_database, installed_for
from dkron.store.state import StateMachine


def _fill(state: StateMachine, count: int, start: int = 1) -> None:
    for i in range(start, start + count):
        state.apply(i, "set_meta", {"key": f"k{i}", "value": i})


def test_copy_is_consistent_and_installs_over_a_live_database(tmp_path: Path) -> None:
    source = StateMachine(str(tmp_path / "source.db"))
    _fill(source, 50)
    copy = tmp_path / "copy.db"
    assert copy_database(source.path, str(copy)) == 50

    behind = StateMachine(str(tmp_path / "behind.db"))
    _fill(behind, 3)
    reader = Reader(behind.path)
    assert reader.meta("k40") is None  # a reader connection is open before the install

    assert install_database(str(copy), behind, marker_index=40) == 50
    assert not copy.exists()
    assert behind.applied_index() == 50
    assert reader.meta("k40") == 40  # the open reader sees the installed rows
    assert installed_for(behind.path) == 40
    # Entries up to the copy's index arrive again through Raft and are skipped as replays.
    assert behind.apply(45, "set_meta", {"key": "k45", "value": -1}) == {"replayed": True}
    assert behind.apply(51, "set_meta", {"key": "k51", "value": 51}) == {"ok": True}
    assert reader.meta("k45") == 45 and reader.meta("k51") == 51


def test_a_copy_older_than_the_marker_or_damaged_is_refused(tmp_path: Path) -> None:
    source = StateMachine(str(tmp_path / "source.db"))
    _fill(source, 10)
    copy = tmp_path / "copy.db"
    copy_database(source.path, str(copy))
    target = StateMachine(str(tmp_path / "target.db"))
    with pytest.raises(ValueError, match="older than the snapshot"):
        install_database(str(copy), target, marker_index=20)
    assert target.applied_index() == 0

    copy.write_bytes(b"not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        install_database(str(copy), target, marker_index=5)
    assert target.applied_index() == 0


def test_start_up_check_accepts_an_installed_copy_ahead_of_the_log(tmp_path: Path) -> None:
    marker = tmp_path / "raft.marker"
    journal = tmp_path / "raft.journal"
    marker.write_bytes(
        pickle.dumps(
            {"format": MARKER_FORMAT, "last": (b"x", 40, 1), "prev": (b"x", 39, 1), "cluster": [], "applied_index": 40}
        )
    )
    # A database at 50 whose log ends at 40 is refused (the log was lost) ...
    with pytest.raises(RuntimeError, match=r"raft\.journal was lost"):
        check_log_covers_state(str(journal), str(marker), 50)
    # ... unless it was installed from a peer for exactly this marker.
    check_log_covers_state(str(journal), str(marker), 50, installed=40)
    with pytest.raises(RuntimeError):
        check_log_covers_state(str(journal), str(marker), 50, installed=30)
