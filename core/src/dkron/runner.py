"""Runs dispatched executions on this node, through the executor plugins.

The runner is the agent side of a run: it refuses a run id it has already started, records the
start, streams the executor's output into a capped tail buffer (visible live in ``/v1/busy``),
applies the job's processors where the job ran, and records the result. An executor that
raises is turned into a failed execution with the error in its output: a plugin bug never
takes the agent down.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dkron.contracts import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    ExecutorRegistry,
    PreparedExecution,
    ProcessorRegistry,
)
from dkron.jobs import format_time
from dkron.ledger import RunLedger
from dkron.logcontext import run_context
from dkron.redact import output_masks

log = logging.getLogger(__name__)


def _ledger_key(spec: RunSpec) -> str:
    return f"{spec.run_id}#{spec.attempt}"


@dataclass
class RunSpec:
    """One execution to start here, as decided (and committed) by the leader."""

    job: dict[str, Any]
    run_id: str
    execution_id: str
    node_name: str
    kind: str = "scheduled"  # scheduled | manual | catchup | retry | dependent
    scheduled_ms: int = 0
    attempt: int = 1
    group: int = 0
    #: A manual run with ``force``: the job's concurrency policy is not applied (leader side only).
    force: bool = False
    #: Start no earlier than this (``time.time()`` seconds; 0 = at once). The leader sends runs
    #: due at a whole second a little ahead, so its own work, the network's and this node's
    #: acceptance are done before the second instead of during it.
    start_at: float = 0.0


class TailBuffer:
    """Keeps the last ``cap`` bytes of output and counts all of it. Thread-safe."""

    def __init__(self, cap: int, masks: tuple[bytes, ...] = ()) -> None:
        self.cap = cap
        #: Secret values to show as ``*`` of the same length (same length: readers that stream the
        #: tail count bytes against ``total``).
        self.masks = masks
        self._data = bytearray()
        self.total = 0
        self._lock = threading.Lock()

    def write(self, chunk: bytes | str) -> None:
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8", "replace")
        with self._lock:
            self.total += len(chunk)
            self._data += chunk
            if len(self._data) > self.cap:
                del self._data[: len(self._data) - self.cap]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._data)

    def text(self) -> str:
        with self._lock:
            data = bytes(self._data)
        for secret in self.masks:
            data = data.replace(secret, b"*" * len(secret))
        return data.decode("utf-8", "replace")


Report = Callable[[dict[str, Any]], None]

#: The longest a run is held for its start time (a guard against a wrong or jumping clock).
MAX_HOLD = 5.0
#: A held run is prepared (its executor's ``prepare``) only with at least this long to go.
PREPARE_MIN_LEAD = 0.02


@dataclass
class Running:
    spec: RunSpec
    started_at: str
    output: TailBuffer
    report: Report
    cancel: CancelToken = field(default_factory=CancelToken)
    #: When it may start (``time.time()``; 0 = at once) and, while held, what became of it:
    #: "held", "preparing" (its executor is preparing it), "due" (its time came while it was
    #: being prepared: the preparer launches it), "gone" (killed while being prepared: the
    #: preparer discards it) or "launched".
    start_at: float = 0.0
    phase: str = "held"
    prepared: PreparedExecution | None = None
    #: Its prepared execution, once started (by the starter, before a worker took the run).
    begun: PreparedExecution | None = None


def _now() -> str:
    return format_time(datetime.now(UTC)) or ""


def _iso(seconds: float) -> str:
    return format_time(datetime.fromtimestamp(seconds, UTC)) or ""


def _scheduled_iso(ms: int) -> str | None:
    return _iso(ms / 1000) if ms else None


class Runner:
    def __init__(
        self,
        node_name: str,
        executors: ExecutorRegistry,
        processors: ProcessorRegistry,
        record: Callable[[dict[str, Any]], None],
        *,
        max_concurrent: int = 256,
        max_output_bytes: int = 256_000,
        ledger: RunLedger | None = None,
    ) -> None:
        self.node_name = node_name
        self.executors = executors
        self.processors = processors
        self._record = record
        self.max_output_bytes = max_output_bytes
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="run")
        self._workers = max_concurrent
        #: Runs handed to the pool and not finished (queued or running): below ``_workers``, a
        #: worker is idle, so a run started before it is handed over is not left unwatched.
        self._busy = 0
        self._lock = threading.Lock()
        # Keyed by (job, execution id): execution ids are unique per job only (as in Dkron).
        self._running: dict[tuple[str, str], Running] = {}
        # Run ids started here (kept across restarts): an agent never starts the same run
        # twice, even if a new leader re-dispatches it.
        self.ledger = ledger or RunLedger(None)
        self._accepting = True
        #: Accepted runs waiting for their start time: (start_at, seq, running), and the thread
        #: that starts them (made on first use).
        self._held: list[tuple[float, int, Running]] = []
        self._held_seq = itertools.count()
        self._held_cond = threading.Condition(self._lock)
        self._starter: threading.Thread | None = None
        self._held_killed = False
        #: Held runs whose executor can prepare them, in arrival order, and the thread that does.
        self._to_prepare: deque[Running] = deque()
        self._prepare_cond = threading.Condition(self._lock)
        self._preparer: threading.Thread | None = None
        self._prepared = 0
        #: At most as many prepared runs wait as may run at once (each may be a waiting
        #: process): more would not start sooner, and preparing costs CPU (an extra exec of the
        #: gate's shell) while the leader may still be dispatching a large burst.
        self._max_prepared = max_concurrent
        #: When a run last began executing (monotonic): its node defers sending results while
        #: runs are still being started, so that the burst of a whole second has the CPU.
        self.last_start = 0.0

    # -- dispatch ----------------------------------------------------------------------------
    def submit(self, spec: RunSpec, report: Report | None = None) -> str:
        """Start ``spec`` in the background. Returns "started", "duplicate" or "stopping".

        ``report`` receives the execution's records (running, then final); by default they go to
        the local recorder. A run dispatched by a remote leader reports on the leader's stream.
        """
        return self.submit_many([(spec, report)])[0]

    def submit_many(self, runs: list[tuple[RunSpec, Report | None]]) -> list[str]:
        """:meth:`submit` for a batch (a leader's StartRuns): one ledger write for all of them.

        A run whose ``start_at`` is ahead is accepted now (claimed, listed as running) and held
        until then; its "running" record carries that planned start time."""
        now = time.time()
        with self._lock:
            if not self._accepting:
                return ["stopping"] * len(runs)
            # A held run is only reserved: it is written to the ledger when it starts (_launch),
            # so a crash while it waits does not make it look started after the restart.
            fresh = self.ledger.reserve_many([_ledger_key(spec) for spec, _ in runs])
            outcomes, accepted = [], []
            for (spec, report), new in zip(runs, fresh, strict=True):
                if not new:
                    outcomes.append("duplicate")
                    continue
                masks = output_masks(spec.job, self.executors)
                start_at = min(spec.start_at, now + MAX_HOLD)
                planned = _iso(start_at) if start_at > now else _now()
                running = Running(spec, planned, TailBuffer(self.max_output_bytes, masks), report or self._record)
                running.start_at = start_at if start_at > now else 0.0
                self._running[(spec.job["name"], spec.execution_id)] = running
                accepted.append(running)
                outcomes.append("started")
            self.ledger.commit([_ledger_key(running.spec) for running in accepted if not running.start_at])
        held = []
        for running in accepted:
            running.report(self._event(running, "running"))  # before it can start, let alone end
            if running.start_at:
                held.append(running)
            else:
                running.phase = "launched"
                self._submit(running)
        if held:
            with self._lock:
                for running in held:
                    heapq.heappush(self._held, (running.start_at, next(self._held_seq), running))
                    if callable(getattr(self.executors.get(running.spec.job["executor"]), "prepare", None)):
                        self._to_prepare.append(running)
                self._start_held_runs()
        return outcomes

    def _start_held_runs(self) -> None:
        """Wake (or make) the threads that prepare held runs and start them at their time. Lock held."""
        if self._starter is None:
            self._starter = threading.Thread(target=self._starter_loop, name="run-starter", daemon=True)
            self._starter.start()
        self._held_cond.notify()
        if self._to_prepare:
            if self._preparer is None:
                self._preparer = threading.Thread(target=self._preparer_loop, name="run-preparer", daemon=True)
                self._preparer.start()
            self._prepare_cond.notify()

    def _preparer_loop(self) -> None:
        """Prepare held runs one at a time (executors such as shell spawn the process early).

        A run not prepared by its time simply starts as any other run."""
        while True:
            with self._lock:
                while not self._to_prepare:
                    self._prepare_cond.wait()
                running = self._to_prepare.popleft()
                if (
                    running.phase != "held"
                    or running.cancel.cancelled
                    or self._prepared >= self._max_prepared
                    or running.start_at - time.time() < PREPARE_MIN_LEAD
                ):
                    continue
                running.phase = "preparing"
            prepared = self._prepare(running)
            with self._lock:
                phase = running.phase
                running.phase = {"preparing": "held", "due": "launched"}.get(phase, phase)
                if prepared is not None and phase != "gone":
                    running.prepared = prepared
                    self._prepared += 1
            if phase == "gone":  # killed meanwhile, and already reported as such
                if prepared is not None:
                    self._discard(prepared, running)
            elif phase == "due":  # its time came meanwhile
                self._launch([running])

    def _prepare(self, running: Running) -> PreparedExecution | None:
        executor = self.executors.get(running.spec.job["executor"])
        with run_context(running.spec.job["name"], running.spec.run_id):
            try:
                return executor.prepare(self._request(running.spec), running.output, running.cancel)  # type: ignore[union-attr]
            except Exception:  # a plugin bug: the run starts at its time through execute()
                log.exception(
                    "executor %s failed to prepare a run of %s", running.spec.job["executor"], running.spec.job["name"]
                )
                return None

    def _discard(self, prepared: PreparedExecution, running: Running) -> None:
        try:
            prepared.discard()
        except Exception:
            log.exception("executor %s failed to discard a prepared run", running.spec.job["executor"])

    def _release(self, running: Running) -> PreparedExecution | None:
        """Take the run's prepared execution, if any (it no longer counts as waiting)."""
        with self._lock:
            prepared, running.prepared = running.prepared, None
            if prepared is not None:
                self._prepared -= 1
        return prepared

    def _starter_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    now = time.time()
                    due = []
                    if self._held_killed:  # kill() or shutdown: cancelled runs end now
                        self._held_killed = False
                        due = [entry[2] for entry in self._held if entry[2].cancel.cancelled]
                        self._held = [entry for entry in self._held if not entry[2].cancel.cancelled]
                        heapq.heapify(self._held)
                    while self._held and self._held[0][0] <= now:
                        due.append(heapq.heappop(self._held)[2])
                    if due:
                        break
                    wait = self._held[0][0] - now if self._held else None
                    self._held_cond.wait(min(wait, 1.0) if wait is not None else None)
                launch = []
                for running in due:
                    if running.phase != "preparing":
                        running.phase = "launched"
                    elif running.cancel.cancelled:
                        running.phase = "gone"  # ended as killed below; the preparer discards it
                    else:
                        running.phase = "due"  # the preparer launches it once prepared
                        continue
                    launch.append(running)
            self._launch(launch)

    def _launch(self, runs: list[Running]) -> None:
        """Start held runs whose time has come (or end those that were killed).

        Prepared runs are started right here, all of them first, as long as a worker is idle
        to follow each: a burst's runs then begin within a millisecond, not one by one as
        workers wake up. The others start when a worker takes them, so no more than
        ``max_concurrent`` run at once.
        """
        live = [running for running in runs if not running.cancel.cancelled]
        dead = [running for running in runs if running.cancel.cancelled]
        self.ledger.commit([_ledger_key(running.spec) for running in live])  # before any of them starts
        started_at = _now()
        with self._lock:
            idle = self._workers - self._busy
            for running in live:
                running.started_at = started_at
                if running.prepared is not None and idle > 0:
                    running.begun, running.prepared = running.prepared, None
                    self._prepared -= 1
                    idle -= 1
        if any(running.begun is not None for running in live):
            self.last_start = time.monotonic()
        for running in live:
            if running.begun is not None:
                running.begun.start()
        for running in live:
            try:
                self._submit(running)
            except RuntimeError:  # the pool was shut down (the node is stopping)
                if running.begun is not None:  # already started: follow it here
                    with self._lock:
                        self._busy += 1
                    self._run(running)
                    continue
                running.cancel.cancel("agent shutting down")
                self._end_unstarted(running)
        for running in dead:
            self._end_unstarted(running)

    def _submit(self, running: Running) -> None:
        with self._lock:
            self._busy += 1
        try:
            self._pool.submit(self._run, running)
        except RuntimeError:
            with self._lock:
                self._busy -= 1
            raise

    def _end_unstarted(self, running: Running) -> None:
        prepared = self._release(running)
        if prepared is not None:
            self._discard(prepared, running)
        reason = f"killed before it started: {running.cancel.reason}"
        self._finish(running, ExecutionResult(success=False, error=reason))

    def _event(self, running: Running, status: str, **extra: Any) -> dict[str, Any]:
        spec = running.spec
        return {
            "id": spec.execution_id,
            "job_name": spec.job["name"],
            "run_id": spec.run_id,
            "group": spec.group,
            "attempt": spec.attempt,
            "node_name": self.node_name,
            "kind": spec.kind,
            "scheduled_at": _scheduled_iso(spec.scheduled_ms),
            "started_at": running.started_at,
            "finished_at": None,
            "status": status,
            **extra,
        }

    def _run(self, running: Running) -> None:
        self.last_start = time.monotonic()
        try:
            with run_context(running.spec.job["name"], running.spec.run_id):  # job and run id on its log lines
                self._run_in_context(running)
        finally:
            with self._lock:
                self._busy -= 1

    def _run_in_context(self, running: Running) -> None:
        job = running.spec.job
        try:
            result = self._execute(running)
        except Exception as exc:  # the error boundary: a plugin bug fails the run, not the agent
            log.exception("executor %s crashed running job %s", job.get("executor"), job["name"])
            running.output.write(f"\nexecutor crashed: {traceback.format_exc(limit=5)}")
            result = ExecutionResult(success=False, error=f"executor crashed: {exc}")
        self._finish(running, result)

    def _finish(self, running: Running, result: ExecutionResult) -> None:
        """Build the final record (processors applied), forget the run, report the record."""
        spec = running.spec
        output = running.output.text()
        if not result.success and result.error and result.error not in output:
            output = f"{result.error}\n{output}"  # Dkron prefixes the error (e.g. "exit status 1")
        record = self._event(
            running,
            "success" if result.success else "failed",
            finished_at=_now(),
            success=result.success,
            error=result.error,
            exit_code=result.exit_code,
            output=output,
            output_truncated=running.output.truncated,
            output_bytes=running.output.total,
        )
        record = self._process(spec.job, record)
        with self._lock:
            self._running.pop((spec.job["name"], spec.execution_id), None)
        running.report(record)

    def _execute(self, running: Running) -> ExecutionResult:
        spec = running.spec
        job = spec.job
        if running.begun is not None:
            return running.begun.wait()
        prepared = self._release(running)
        if prepared is not None:
            if running.cancel.cancelled:
                self._discard(prepared, running)
                return ExecutionResult(success=False, error=f"killed before it started: {running.cancel.reason}")
            prepared.start()
            return prepared.wait()
        executor = self.executors.get(job["executor"])
        if executor is None:
            return ExecutionResult(
                success=False, error=f"executor {job['executor']!r} is not installed on node {self.node_name}"
            )
        return executor.execute(self._request(spec), running.output, running.cancel)

    def _request(self, spec: RunSpec) -> ExecutionRequest:
        job = spec.job
        return ExecutionRequest(
            job_name=job["name"],
            run_id=spec.run_id,
            config=job.get("executor_config") or {},
            attempt=spec.attempt,
            execution_id=spec.execution_id,
            node_name=self.node_name,
            scheduled_at=_scheduled_iso(spec.scheduled_ms) or "",
            metadata=job.get("metadata") or {},
        )

    def _process(self, job: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        # Processors run here, where the job ran, in a stable (sorted) order; Dkron runs them
        # on the leader in random map order.
        for name, config in sorted((job.get("processors") or {}).items()):
            processor = self.processors.get(name)
            if processor is None:
                log.warning("processor %s is not installed on %s; skipped", name, self.node_name)
                continue
            try:
                record = processor.process(dict(record), config)
            except Exception:
                log.exception("processor %s failed for job %s; output kept as is", name, job["name"])
        return record

    # -- control -----------------------------------------------------------------------------
    def kill(self, job: str, execution_id: str, reason: str = "killed by request") -> bool:
        with self._lock:
            running = self._running.get((job, execution_id))
        if running is None:
            return False
        running.cancel.cancel(reason)
        self._wake_starter()
        return True

    def _wake_starter(self) -> None:
        """Cancelled held runs are finished at once, not at their start time."""
        with self._lock:
            self._held_killed = True
            self._held_cond.notify()

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._running.values())
        return [self._event(r, "running", output=r.output.text()) for r in items]

    def output_of(self, job: str, execution_id: str) -> TailBuffer | None:
        with self._lock:
            running = self._running.get((job, execution_id))
        return running.output if running else None

    @property
    def prepared_runs(self) -> int:
        """Held runs whose executor has made them ready (e.g. a process waiting to start)."""
        with self._lock:
            return self._prepared

    def running_jobs(self) -> set[str]:
        with self._lock:
            return {r.spec.job["name"] for r in self._running.values()}

    def is_running(self, job: str, execution_id: str) -> bool:
        with self._lock:
            return (job, execution_id) in self._running

    def shutdown(self, grace: float) -> None:
        """Stop accepting runs; let running ones finish for ``grace`` seconds, then cancel them."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.05)
        with self._lock:
            leftovers = list(self._running.values())
        for running in leftovers:
            running.cancel.cancel("agent shutting down")
        self._wake_starter()
        self._pool.shutdown(wait=True, cancel_futures=False)
        # Held runs cancelled above are finished by the starter thread.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.01)
