"""The leader's check that every "running" execution still has a live node running it.

Dkron leaves executions "running" forever when their agent dies, which then blocks
``concurrency: forbid`` jobs for good. Here, once a second, the leader marks an execution lost
when its node stopped heartbeating (``failed``/``left``), or when its node is alive but no
longer reports it (the agent restarted), after a grace period.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from dkron.cluster.membership import Membership, Node
from dkron.jobs import format_time
from dkron.logcontext import about
from dkron.runner import Runner
from dkron.store.queries import Reader

log = logging.getLogger(__name__)

#: Seconds a node's running list must postdate a run's start before its absence counts (covers
#: the time the node takes to send the list and clock skew between nodes).
REPORT_MARGIN = 2.0


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Reaper:
    def __init__(
        self,
        *,
        node_name: str,
        membership: Membership,
        reader: Reader,
        runner: Runner,
        record: Callable[[dict[str, Any]], None],
        is_leader: Callable[[], bool],
        grace: float,
        interval: float = 1.0,
        register: Callable[[Node], bool] | None = None,
        retry: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.node_name = node_name
        self.membership = membership
        self.reader = reader
        self.runner = runner
        self.record = record
        self.is_leader = is_leader
        self.grace = grace
        self.interval = interval
        #: Commits a node's registration; True once done (``Node.registered``).
        self.register = register
        #: Sends a run again to its node, which refuses it if it ever started there
        #: (``Scheduler.retry_unstarted``); True if sent.
        self.retry = retry
        self._stop = threading.Event()
        self._reported: set[tuple[str, str]] = set()
        #: Runs sent again, and when: one try each; if still unreported after the grace, lost.
        self._retried: dict[tuple[str, str], float] = {}
        self._thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.is_leader():
                self._reported.clear()
                self._retried.clear()
                continue
            try:
                self.reap()
            except Exception:
                log.exception("reaper pass failed")

    def reap(self) -> int:
        for node in self.membership.expire():
            log.warning("node %s stopped heartbeating: marked failed", node.name)
        if self.register is not None:
            for node in self.membership.unregistered():
                node.registered = self.register(node)
        now = datetime.now(UTC)
        settled = format_time(now - timedelta(seconds=self.grace)) or ""
        reaped = 0
        for ex in self.reader.running_executions():
            key = (ex["job_name"], ex["id"])
            if key in self._reported:
                continue
            reason = self._lost_reason(ex, settled)
            if reason is None or self._retrying(ex, key):
                continue
            self._reported.add(key)
            reaped += 1
            log.warning(
                "execution %s of %s lost: %s",
                ex["id"],
                ex["job_name"],
                reason,
                extra=about(ex["job_name"], ex.get("run_id") or ""),
            )
            self.record(
                {
                    **ex,
                    "status": "lost",
                    "success": False,
                    "finished_at": format_time(now),
                    "error": reason,
                    "output": f"{reason}\n{ex.get('output') or ''}",
                }
            )
        return reaped

    def _retrying(self, ex: dict[str, Any], key: tuple[str, str]) -> bool:
        """A run whose node is alive but restarted without it may never have started: send it
        there once more before calling it lost (its node's ledger refuses it if it started)."""
        now = time.monotonic()
        tried = self._retried.get(key)
        if tried is not None:
            return now - tried < self.grace + REPORT_MARGIN  # the answer is the node's next report
        node = self.membership.get(ex["node_name"])
        alive = ex["node_name"] == self.node_name or (node is not None and node.status == "alive")
        if self.retry is None or not alive:
            return False
        if len(self._retried) > 10_000:
            self._retried = {k: t for k, t in self._retried.items() if now - t < 600}
        self._retried[key] = now
        return self.retry(ex)

    def _lost_reason(self, ex: dict[str, Any], settled: str) -> str | None:
        if (ex.get("started_at") or "") > settled:
            return None  # too recent: its node may not have reported it in a heartbeat yet
        if ex["node_name"] == self.node_name:
            if self.runner.is_running(ex["job_name"], ex["id"]):
                return None
            return f"node {self.node_name} is no longer running it (it restarted); outcome unknown"
        node = self.membership.get(ex["node_name"])
        if node is None or node.status in ("failed", "left"):
            state = node.status if node else "unknown"
            return f"node {ex['node_name']} is {state} (no heartbeat); the run's outcome is unknown"
        if node.reported_wall < _epoch(ex.get("started_at")) + REPORT_MARGIN:
            return None  # no running list from that node since the run started (e.g. a new leader)
        if ex["id"] not in node.running:
            return f"node {ex['node_name']} no longer reports this run (it restarted); outcome unknown"
        return None
