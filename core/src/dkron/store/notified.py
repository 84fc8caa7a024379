"""Which runs' post-run notifications were delivered (so a new leader does not send them again).

The leader marks a run (``<run id>#<attempt>``) once its notifications are sent or given up on;
a server that becomes leader re-sends only recent finished runs without a mark. Rows older than a
day are pruned by the marking command itself.
"""

from __future__ import annotations

import sqlite3
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS notified (
    key TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    sent_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS notified_sent ON notified(sent_ms);
"""


def apply_notified(db: sqlite3.Connection, payload: dict[str, Any]) -> dict[str, Any]:
    db.executemany(
        "INSERT OR IGNORE INTO notified(key, job, sent_ms) VALUES (?,?,?)",
        [(run["key"], run["job"], payload["now_ms"]) for run in payload["runs"]],
    )
    if payload.get("prune_before_ms"):
        db.execute("DELETE FROM notified WHERE sent_ms < ?", (payload["prune_before_ms"],))
    return {"marked": len(payload["runs"])}


def is_notified(db: sqlite3.Connection, key: str) -> bool:
    return db.execute("SELECT 1 FROM notified WHERE key=?", (key,)).fetchone() is not None
