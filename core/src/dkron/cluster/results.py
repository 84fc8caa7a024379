"""Results a worker keeps until the leader confirms they are committed.

A leader acknowledges a result when it has it in memory (on its ``WatchRuns`` stream, or
an ``ExecutionDone`` reply), but it commits results in batches a few milliseconds later. If it
dies in between, the result is gone, and the next leader would record the run as lost although
it finished. So the worker keeps every final result it reported, lists it in its heartbeats
until the leader says the final record is committed, and sends it again with ``ExecutionDone``
when that takes too long. Sending again is safe: a final record is never overwritten.

While a result is unconfirmed its execution counts as running on this node, so the leader's
reaper does not declare it lost in the meantime.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (job name, execution id)


@dataclass
class _Held:
    record: dict[str, Any]
    first: float
    sent: float  # when it was last handed to a leader


class ResultBook:
    def __init__(self, *, resend_after: float = 3.0, give_up_after: float = 3600.0, capacity: int = 100_000) -> None:
        self.resend_after = resend_after
        self.give_up_after = give_up_after
        self.capacity = capacity
        self._held: dict[Key, _Held] = {}
        self._lock = threading.Lock()

    def hold(self, record: dict[str, Any]) -> None:
        """Keep ``record`` (a final execution record, being sent now) until it is confirmed."""
        key = (record["job_name"], record["id"])
        now = time.monotonic()
        with self._lock:
            held = self._held.get(key)
            if held is None:
                if len(self._held) >= self.capacity:
                    # Bounded memory: the oldest result goes first; its run will read as lost.
                    oldest = next(iter(self._held))
                    log.error("too many unconfirmed results; giving up on %s/%s", *oldest)
                    del self._held[oldest]
                self._held[key] = _Held(record, now, now)
            else:
                held.sent = now

    def refs(self, limit: int = 2000) -> list[Key]:
        """Up to ``limit`` unconfirmed results, oldest first (for a heartbeat)."""
        with self._lock:
            return [key for key, _ in zip(self._held, range(limit), strict=False)]

    def execution_ids(self) -> list[str]:
        with self._lock:
            return [execution_id for _, execution_id in self._held]

    def confirm(self, keys: Iterable[Key]) -> int:
        with self._lock:
            return sum(1 for key in keys if self._held.pop(key, None) is not None)

    def due(self) -> list[dict[str, Any]]:
        """Results to send again now; each is marked sent. Very old ones are dropped with an error."""
        now = time.monotonic()
        out = []
        with self._lock:
            for key, held in list(self._held.items()):
                if now - held.first > self.give_up_after:
                    log.error("result of %s/%s never confirmed by a leader; giving up", *key)
                    del self._held[key]
                elif now - held.sent >= self.resend_after:
                    held.sent = now
                    out.append(held.record)
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)
