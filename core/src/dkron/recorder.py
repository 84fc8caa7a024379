"""Batches execution events into few Raft commands.

At 1,000 runs a second, one Raft write per start and per finish would be 2,000 commits a
second; instead events are collected for a few milliseconds and committed together. A failed
commit is retried (the ``record`` command is idempotent: a final record is never overwritten),
so a leader change delays history but does not lose it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from dkron.jobs import format_time
from dkron.store.raft import StoreUnavailable

log = logging.getLogger(__name__)

WriteFn = Callable[[str, dict[str, Any]], Any]

#: Events per ``record`` command. Every server applies a command in one go on its Raft thread,
#: which sends no heartbeat meanwhile: 1,000 records took 0.1-0.3 s on a loaded 2-core host,
#: as long as an election timeout. 250 keep it near 50 ms and still commit thousands a second.
MAX_BATCH = 250


class Recorder:
    def __init__(
        self,
        write: WriteFn,
        *,
        keep_per_job: int = 100,
        keep_seconds: float = 0,
        flush_interval: float = 0.02,
        max_batch: int = MAX_BATCH,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._write = write
        self.keep_per_job = keep_per_job
        self.keep_seconds = keep_seconds
        self._interval = flush_interval
        self._max_batch = max_batch
        self._max_bytes = max_bytes
        # Keyed by execution: a short run's "running" and final events usually meet in one
        # batch, and only the latest needs writing (half the Raft payload at high launch rates).
        self._pending: dict[tuple[str, str], dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        #: At shutdown, uncommittable events are dropped after this moment (monotonic clock).
        self._give_up_at = float("inf")
        self._abandon: Callable[[], bool] = lambda: False
        self._inflight = 0
        self._thread = threading.Thread(target=self._loop, name="recorder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, event: dict[str, Any]) -> None:
        key = (event["job_name"], event["id"])
        with self._cond:
            if event.get("status") == "running" and key in self._pending:
                return  # a late start never replaces the final record on its way (or itself)
            self._pending[key] = event
            if len(self._pending) >= self._max_batch:
                self._cond.notify()

    def commit_now(self, events: list[dict[str, Any]]) -> None:
        """Commit ``events`` now, bypassing the queue; raises ``StoreUnavailable``.

        For records that must be in the store before what follows them is: the scheduler's
        missed ticks, which a later launch would otherwise hide (see ``Scheduler._become_leader``).
        In commands of at most ``max_batch`` events, as the queue's. Idempotent like every
        record: a retry after an unknown outcome changes nothing.
        """
        for start in range(0, len(events), self._max_batch):
            self._write("record", {"executions": events[start : start + self._max_batch], **self._retention()})

    def _retention(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"keep_per_job": self.keep_per_job}
        if self.keep_seconds:
            payload["keep_since"] = format_time(datetime.now(UTC) - timedelta(seconds=self.keep_seconds))
        return payload

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    self._cond.wait(self._interval)
                if not self._pending:
                    if self._stopping:
                        return
                    continue
                batch, size = [], 0
                # Bounded by count and by bytes: one Raft entry must stay far below MAX_ENTRY_BYTES.
                for key in list(itertools.islice(self._pending, self._max_batch)):
                    event = self._pending[key]
                    size += len(event.get("output") or "") + 512
                    if batch and size > self._max_bytes:
                        break
                    batch.append(self._pending.pop(key))
                self._inflight = len(batch)
            self._commit(batch)
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()
            time.sleep(self._interval)  # let events accumulate: fewer, larger commits

    def _commit(self, batch: list[dict[str, Any]]) -> None:
        delay = 0.05
        while True:
            try:
                self._write("record", {"executions": batch, **self._retention()})
                return
            except StoreUnavailable as exc:
                if self._stopping and (time.monotonic() >= self._give_up_at or self._abandon()):
                    # Remote runs' results are still held by their nodes, which send them to
                    # the next leader; only this node's own runs lose their record here.
                    log.error("dropping %d execution events at shutdown: %s", len(batch), exc)
                    return
                log.warning("execution records not committed yet (%s); retrying", exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything added so far is committed; return False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
            while self._pending or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float = 10.0, abandon: Callable[[], bool] = lambda: False) -> None:
        """Commit what is pending, for at most ``timeout`` seconds in all (plus one write), or
        until ``abandon()`` says it cannot commit any more (e.g. no leader left)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._stopping = True
            self._give_up_at = deadline
            self._abandon = abandon
            self._cond.notify_all()
        self.flush(timeout)
        self._thread.join(max(0.5, deadline - time.monotonic()) + 1.0)
