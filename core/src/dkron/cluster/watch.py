"""The node's side of a leader's ``WatchRuns`` stream: which executions report to which stream.

A leader opens one stream per node (with a ``watch_id`` new for each stream) and names it in
every ``StartRuns``. The final result of an execution started that way is queued on its
stream if that stream is still open, and the output of its running executions is polled into
the same batches, so a thousand runs cost one stream, not a thousand.

When a stream closes, the results queued on it and not yet sent are handed to
``on_orphaned`` (delivered with ``ExecutionDone``), and so are the later results of the
executions it watched. Results that were sent are held by the node's ``ResultBook`` until a
leader confirms them committed, so a stream that breaks in flight loses nothing either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dkron.proto import agent_pb2
from dkron.runner import Runner

Key = tuple[str, str]  # (job name, execution id)

#: Final results wait until no run has begun for this long (the node is not starting a burst
#: of runs: sending results meanwhile would take CPU from the starts), ...
FINALS_QUIET = 0.05
#: ... but never longer than this.
FINALS_MAX_HOLD = 1.0


class Watcher:
    """One open ``WatchRuns`` stream."""

    def __init__(self, watch_id: str, runner: Runner, output_every: float) -> None:
        self.watch_id = watch_id
        self._runner = runner
        self._cond = threading.Condition()
        self._open = True
        self._finals: list[tuple[dict[str, Any], agent_pb2.RunEvent]] = []
        self._first_final = 0.0  # when the oldest queued final result was queued (monotonic)
        #: Running executions started for this stream -> output bytes already sent.
        self._owned: dict[Key, int] = {}
        self._output_every = output_every
        self._next_output = time.monotonic() + output_every

    def own(self, key: Key) -> bool:
        """Watch ``key``; True if it was not watched yet."""
        with self._cond:
            if not self._open or key in self._owned:
                return False
            self._owned[key] = 0
            return True

    def disown(self, key: Key) -> None:
        with self._cond:
            self._owned.pop(key, None)

    def put_final(self, record: dict[str, Any], event: agent_pb2.RunEvent) -> bool:
        """Queue a final result; False if the stream has closed (deliver it another way)."""
        with self._cond:
            if not self._open:
                return False
            self._owned.pop((record["job_name"], record["id"]), None)
            if not self._finals:
                self._first_final = time.monotonic()
            self._finals.append((record, event))
            self._cond.notify()
            return True

    def next_events(self, wait: float) -> list[agent_pb2.RunEvent]:
        """The next batch: output since the last poll (every ``output_every`` s) and the final
        results queued meanwhile. Waits up to ``wait`` s for a result; may return nothing."""
        with self._cond:
            deadline = time.monotonic() + wait
            while True:
                now = time.monotonic()
                if self._finals:
                    send_at = min(self._runner.last_start + FINALS_QUIET, self._first_final + FINALS_MAX_HOLD)
                else:
                    send_at = min(deadline, self._next_output)
                if now >= send_at or not self._open:
                    break
                self._cond.wait(send_at - now)
            finals, self._finals = self._finals, []
            now = time.monotonic()
            due = now >= self._next_output
            owned = list(self._owned.items()) if due else []
            if due:
                self._next_output = now + self._output_every
        events = self._output(owned)
        events += [event for _, event in finals]
        return events

    def _output(self, owned: list[tuple[Key, int]]) -> list[agent_pb2.RunEvent]:
        events = []
        for (job, execution_id), sent in owned:
            buffer = self._runner.output_of(job, execution_id)
            if buffer is None:
                continue  # finished: its final result carries the output
            total, tail = buffer.total, buffer.text().encode("utf-8", "replace")
            if total <= sent:
                continue
            new = tail[-(total - sent) :] if total - sent <= len(tail) else tail
            events.append(
                agent_pb2.RunEvent(
                    execution_id=execution_id,
                    job_name=job,
                    output=agent_pb2.ExecutionOutput(chunk=new, offset=total - len(new)),
                )
            )
            with self._cond:
                if (job, execution_id) in self._owned:
                    self._owned[(job, execution_id)] = total
        return events

    def close(self) -> list[dict[str, Any]]:
        """Close; return the final results that were queued and never sent."""
        with self._cond:
            self._open = False
            unsent = [record for record, _ in self._finals]
            self._finals = []
            self._owned.clear()
            return unsent


class Watchers:
    """The open ``WatchRuns`` streams of this node, by watch id."""

    def __init__(
        self, runner: Runner, on_orphaned: Callable[[dict[str, Any]], None], output_every: float = 0.2
    ) -> None:
        self._runner = runner
        self._on_orphaned = on_orphaned
        self._output_every = output_every
        self._lock = threading.Lock()
        self._by_id: dict[str, Watcher] = {}

    def open(self, watch_id: str) -> Watcher:
        watcher = Watcher(watch_id, self._runner, self._output_every)
        with self._lock:
            previous = self._by_id.get(watch_id)
            self._by_id[watch_id] = watcher
        if previous is not None:  # the same id twice: the newer stream wins
            self._release(previous)
        return watcher

    def close(self, watcher: Watcher) -> None:
        with self._lock:
            if self._by_id.get(watcher.watch_id) is watcher:
                del self._by_id[watcher.watch_id]
        self._release(watcher)

    def _release(self, watcher: Watcher) -> None:
        for record in watcher.close():
            self._on_orphaned(record)

    def _get(self, watch_id: str) -> Watcher | None:
        with self._lock:
            return self._by_id.get(watch_id)

    def own(self, watch_id: str, key: Key) -> bool:
        """Route ``key``'s output to stream ``watch_id``; True if this call started doing so."""
        watcher = self._get(watch_id)
        return watcher is not None and watcher.own(key)

    def disown(self, watch_id: str, key: Key) -> None:
        watcher = self._get(watch_id)
        if watcher is not None:
            watcher.disown(key)

    def send_final(self, watch_id: str, record: dict[str, Any], event: agent_pb2.RunEvent) -> bool:
        watcher = self._get(watch_id)
        return watcher is not None and watcher.put_final(record, event)
