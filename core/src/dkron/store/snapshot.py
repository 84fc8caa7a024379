"""Copying the state database between servers (the snapshot that Raft's marker stands for).

The Raft "snapshot" is a small marker (``raft.py``): the SQLite database is the real one. A
server that was down while the others compacted their logs past its position gets only the
marker from Raft; it then fetches a copy of a peer's database (``ClusterService.FetchState``)
and installs it before applying anything newer.

The copy is taken with SQLite's online backup in one step, which reads a single consistent
snapshot while the Raft thread keeps applying (WAL). The copy may be *ahead* of the marker;
the entries between the marker and the copy's ``applied_index`` then arrive through Raft
again and are skipped as replays, which is right because the copy already contains them.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3

from dkron.store.state import StateMachine

log = logging.getLogger(__name__)

#: Local bookkeeping (not replicated): the marker index a copied database was installed for.
INSTALL_KEY = "snapshot_install"


def applied_index_of(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key='applied_index'").fetchone()
    return int(row[0]) if row else 0


def copy_database(source_path: str, dest_path: str) -> int:
    """Write a consistent copy of the database at ``source_path``; return its applied index."""
    if os.path.exists(dest_path):
        os.remove(dest_path)
    source = sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)
    dest = sqlite3.connect(dest_path)
    try:
        source.backup(dest)  # pages=-1: one step, so one read transaction, so one snapshot
        dest.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file to send
        return applied_index_of(dest)
    finally:
        dest.close()
        source.close()


def install_database(incoming_path: str, state: StateMachine, marker_index: int) -> int:
    """Replace ``state``'s rows with the copy at ``incoming_path``; return the new applied index.

    Raises ``ValueError`` if the copy is damaged or older than ``marker_index``.
    """
    incoming = sqlite3.connect(incoming_path)
    try:
        check = incoming.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise ValueError(f"the received state copy is damaged: {check}")
        applied = applied_index_of(incoming)
        if applied < marker_index:
            raise ValueError(f"the received state copy is at index {applied}, older than the snapshot {marker_index}")
        with state.lock:
            incoming.backup(state.db)  # in place: open readers see the new rows on their next query
            state.db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (INSTALL_KEY, json.dumps({"marker": marker_index, "applied": applied})),
            )
    finally:
        incoming.close()
    os.remove(incoming_path)
    log.warning("installed a copy of the state from a peer: index %d (snapshot marker %d)", applied, marker_index)
    return applied


def installed_for(db_path: str) -> int | None:
    """The marker index the database at ``db_path`` was last installed for, if ever."""
    if not os.path.exists(db_path):
        return None
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (INSTALL_KEY,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return int(json.loads(row[0])["marker"]) if row else None
