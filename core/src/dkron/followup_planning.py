"""The leader's side of retries and dependent runs (mixed into the Scheduler).

The state machine records a follow-up (a retry with its not-before time, or a child run) when
a run ends (``store/followups.py``). The leader claims follow-ups that fall due, naming their
target nodes in one ``claim_followups`` command fenced by its epoch, and dispatches those it
owns at their time. On gaining leadership it re-dispatches follow-ups claimed but never started
(to the same nodes: their run ledger refuses a second start) and plans the unclaimed ones.
Nothing about a pending retry lives only in a leader's memory.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dkron.store import followups
from dkron.store.raft import StoreUnavailable

if TYPE_CHECKING:
    from dkron.runner import RunSpec

log = logging.getLogger(__name__)

FOLLOWUP_KINDS = ("retry", "dependent")
FOLLOWUP_RETENTION_MS = 24 * 3600 * 1000
#: How long the leader retries one of its writes (launches, claims, missed ticks).
LEADER_WRITE_DEADLINE = 10.0

T = TypeVar("T")


class NotLeading(StoreUnavailable):
    """This node stopped leading before its write committed: the next leader takes over."""


class FollowupPlanning:
    # Provided by the Scheduler.
    reader: Any
    write: Callable[[str, dict[str, Any]], Any]
    placement: Any
    epoch: int | None
    paused: bool
    lookahead_ms: int
    retry_backoff_ms: tuple[int, int]
    _leading: Any
    _wake: Any

    def _queue(self, spec: RunSpec, at_ms: int) -> None:  # pragma: no cover - Scheduler's
        raise NotImplementedError

    def followups_changed(self) -> None:
        """A record created follow-ups (tick thread: just wake the planner)."""
        self._wake.set()

    def _write_while_leading(self, write: Callable[[], T]) -> T:
        """``write()`` until it commits, retrying for up to ``LEADER_WRITE_DEADLINE`` seconds.

        Raises ``NotLeading`` once this node no longer leads, and ``StoreUnavailable`` when the
        time is up. Every leader write is idempotent, so a retry after an unknown outcome is safe."""
        deadline = time.monotonic() + LEADER_WRITE_DEADLINE
        while True:
            if not self._leading.is_set():
                raise NotLeading("this node no longer leads")
            try:
                return write()
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _replicate_retry_backoff(self) -> None:
        """The state machine computes retry times from replicated settings: a new leader writes
        its --retry-backoff-base/-max there (once; only when they differ)."""
        base, cap = self.retry_backoff_ms
        wanted = {"base_ms": base, "max_ms": cap}
        if self.reader.meta("retry_backoff") == wanted:
            return
        try:
            self.write("set_meta", {"key": "retry_backoff", "value": wanted})
        except StoreUnavailable as exc:
            log.warning("could not replicate the retry backoff settings: %s", exc)

    def _followup_spec(self, job: dict[str, Any], row: dict[str, Any]) -> RunSpec:
        from dkron.runner import RunSpec

        return RunSpec(
            job=job,
            run_id=row["run_id"],
            execution_id=str(row["grp"] + row["attempt"] - 1),
            node_name=row["node"] or "",
            kind=row["kind"],
            scheduled_ms=row["not_before_ms"],
            attempt=row["attempt"],
            group=row["grp"],
        )

    def _adopt_followups(self, now: int) -> None:
        for row in followups.claimed_unstarted(self.reader.db):
            job = self.reader.get_job(row["job"], with_children=False)
            if job is not None:
                self._queue(self._followup_spec(job, row), max(row["not_before_ms"], now))

    def _plan_followups(self, now: int) -> int | None:
        """Claim and queue the follow-ups due within the lookahead; return the next one's time."""
        if self.paused:
            return None  # held, not dropped: they run when scheduling resumes
        rows = followups.unclaimed(self.reader.db)
        horizon = now + self.lookahead_ms
        due = [r for r in rows if r["not_before_ms"] <= horizon]
        if due:
            self._claim(due, now)
        later = [r["not_before_ms"] for r in rows if r["not_before_ms"] > horizon]
        return min(later) if later else None

    def _claim(self, rows: list[dict[str, Any]], now: int) -> None:
        jobs: dict[str, dict[str, Any]] = {}
        claims = []
        for row in rows:
            job = self.reader.get_job(row["job"], with_children=False)
            if job is None:
                claims.append({"id": row["id"], "node": ""})  # the apply drops it
                continue
            jobs[row["id"]] = job
            # Any eligible node, chosen now: a retry prefers nodes other than those where the failed
            # attempt ran (a broken node must not eat every attempt), falling back to them.
            avoid = (
                self.reader.nodes_of_attempt(row["job"], row["run_id"], row["attempt"] - 1)
                if row["kind"] == "retry"
                else ()
            )
            claims.append({"id": row["id"], "node": ",".join(self.placement.targets(job, avoid))})
        payload = {
            "claims": claims,
            "epoch": self.epoch,
            "proposal": uuid.uuid4().hex,
            "now_ms": now,
            "prune_before_ms": now - FOLLOWUP_RETENTION_MS,
        }
        try:
            result = self._write_while_leading(lambda: self.write("claim_followups", payload))
        except NotLeading:
            return
        except StoreUnavailable as exc:
            log.error("could not claim %d follow-up runs: %s", len(claims), exc)
            return
        accepted = set(result.get("accepted", ())) if isinstance(result, dict) else set()
        nodes = {c["id"]: c["node"] for c in claims}
        for row in rows:
            if row["id"] in accepted and row["id"] in jobs:
                spec = self._followup_spec(jobs[row["id"]], {**row, "node": nodes[row["id"]]})
                self._queue(spec, max(row["not_before_ms"], now))
