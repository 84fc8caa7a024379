"""A node-local, append-only record of the run ids this agent has started.

Written (one small ``write``, no fsync) before an executor starts, so it survives ``kill -9``
of the agent. After a restart, a leader that re-dispatches a launch it cannot prove started
is refused for runs that did start: they are reported as lost instead of running twice.

A run accepted ahead of its time is only *reserved* (in memory: a second dispatch meanwhile
is refused) and written when it starts. A crash while it waits leaves no line, so after the
restart the node accepts it again: a run that never started is run, not reported lost.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict


class RunLedger:
    def __init__(self, path: str | None, cap: int = 100_000) -> None:
        self.path = path
        self.cap = cap
        self._seen: OrderedDict[str, None] = OrderedDict()
        #: Reserved and not written yet (kept out of a compaction: they have not started).
        self._reserved: set[str] = set()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lines = 0
        if path:
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        key = line.strip()
                        if key:
                            self._remember(key)
                            self._lines += 1
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _remember(self, key: str) -> None:
        self._seen[key] = None
        if len(self._seen) > self.cap:
            oldest, _ = self._seen.popitem(last=False)
            self._reserved.discard(oldest)

    def claim(self, key: str) -> bool:
        """Record ``key`` as started; False if it was already started here."""
        return self.claim_many([key])[0]

    def claim_many(self, keys: list[str]) -> list[bool]:
        """Record each of ``keys`` as started, in one write; False for those already started."""
        fresh = self.reserve_many(keys)
        self.commit([key for key, new in zip(keys, fresh, strict=True) if new])
        return fresh

    def reserve_many(self, keys: list[str]) -> list[bool]:
        """Claim ``keys`` in memory only (runs that start later); False for those already claimed.

        A reserved key is refused from then on, but is forgotten by a restart unless
        :meth:`commit` wrote it."""
        with self._lock:
            fresh = []
            for key in keys:
                new = key not in self._seen
                if new:
                    self._remember(key)
                    self._reserved.add(key)
                fresh.append(new)
            return fresh

    def commit(self, keys: list[str]) -> None:
        """Write claimed ``keys`` to the file, in one write: their runs are starting."""
        if not keys:
            return
        with self._lock:
            self._reserved.difference_update(keys)
            if self._fd is None:
                return
            os.write(self._fd, "".join(key + "\n" for key in keys).encode())
            self._lines += len(keys)
            if self._lines > 2 * self.cap:
                self._compact()

    def _compact(self) -> None:
        """Rewrite the file with the remembered keys only (atomic rename)."""
        assert self.path and self._fd is not None
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(key + "\n" for key in self._seen if key not in self._reserved)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lines = len(self._seen) - len(self._reserved)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
