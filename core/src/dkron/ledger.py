"""A node-local, append-only record of the run ids this agent has started.

Written (one small ``write``, no fsync) before an executor starts, so it survives ``kill -9``
of the agent. After a restart, a leader that re-dispatches a launch it cannot prove started
is refused for runs that did start: they are reported as lost instead of running twice.
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
            self._seen.popitem(last=False)

    def claim(self, key: str) -> bool:
        """Record ``key`` as started; False if it was already started here."""
        return self.claim_many([key])[0]

    def claim_many(self, keys: list[str]) -> list[bool]:
        """Record each of ``keys`` as started, in one write; False for those already started."""
        with self._lock:
            fresh = []
            for key in keys:
                new = key not in self._seen
                if new:
                    self._remember(key)
                fresh.append(new)
            claimed = [key for key, new in zip(keys, fresh, strict=True) if new]
            if self._fd is not None and claimed:
                os.write(self._fd, "".join(key + "\n" for key in claimed).encode())
                self._lines += len(claimed)
                if self._lines > 2 * self.cap:
                    self._compact()
            return fresh

    def _compact(self) -> None:
        """Rewrite the file with the remembered keys only (atomic rename)."""
        assert self.path and self._fd is not None
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(key + "\n" for key in self._seen)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._lines = len(self._seen)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
