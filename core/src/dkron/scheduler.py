"""The leader's scheduler: plans launches ahead, commits them through Raft, dispatches on time.

Following "Reliable Cron across the Planet", a launch is a committed record keyed by
(job, scheduled time) *before* it is dispatched. The planner commits the launches due in the
next ``lookahead`` seconds in one Raft command (so Raft latency is off the lateness path and
1,000 launches cost one commit), and the dispatcher starts each at its second. The apply
function admits only the first record for a key, so a tick is never launched twice.

When a node gains leadership it reconciles: launches committed but never started are
dispatched (or recorded as missed when too old), ticks that fell in a gap follow the catch-up
policy (the latest missed tick runs once if it is within ``catchup_window``; the others are
recorded as missed), and executions left "running" by a dead agent process are marked lost.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from dkron.followup_planning import FOLLOWUP_KINDS, FollowupPlanning, NotLeading
from dkron.jobs import format_time, parse_time
from dkron.logcontext import about
from dkron.runner import Runner, RunSpec
from dkron.schedule import ScheduleError
from dkron.store import followups
from dkron.store.queries import Reader
from dkron.store.raft import StoreUnavailable
from dkron.timing import Timing, next_fire, timing_for

log = logging.getLogger(__name__)

MAX_MISSED_COUNTED = 10_000  # bound the catch-up walk for very frequent schedules
MAX_CATCHUP_RUNS = 100  # catchup "all" runs at most this many missed ticks
LAUNCH_RETENTION_MS = 24 * 3600 * 1000
#: Launches per ``launch`` command (see ``Scheduler._commit``).
LAUNCH_BATCH = 1000
#: How early a run due at a whole second is sent to its node (which holds it until then).
DISPATCH_AHEAD = 0.5


class RunRefused(Exception):
    """A manual run cannot start now (HTTP 409)."""

    status = 409  # also what a follower answers when the leader refuses a forwarded run


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def run_id_for(job: str, scheduled_ms: int) -> str:
    """Deterministic: every leader derives the same id for the same tick (DKRON_RUN_ID)."""
    return f"{job}@{scheduled_ms}"


class Placement:
    """Where runs go. This default runs everything on the local node; the cluster layer
    provides one that selects nodes by tags and dispatches over gRPC."""

    def __init__(self, runner: Runner, node_name: str) -> None:
        self.runner = runner
        self.node_name = node_name

    def targets(self, job: dict[str, Any], avoid: Iterable[str] = ()) -> list[str]:
        return [self.node_name]

    def submit(self, spec: RunSpec) -> str:
        return self.runner.submit(spec)

    def running_jobs(self) -> set[str]:
        return self.runner.running_jobs()

    def active(self) -> list[dict[str, Any]]:
        return self.runner.active()

    def kill(self, job: str, execution_id: str, reason: str) -> bool:
        return self.runner.kill(job, execution_id, reason)


@dataclass
class _Entry:
    job: dict[str, Any]
    timing: Timing
    version: int


class Scheduler(FollowupPlanning):
    def __init__(
        self,
        reader: Reader,
        write: Callable[[str, dict[str, Any]], Any],
        runner: Runner,
        record: Callable[[dict[str, Any]], None],
        *,
        node_name: str,
        # 1.5 s: planning then happens mid-second, not at the top of the second when the
        # dispatcher starts the previous batch (both compete for the GIL).
        lookahead: float = 1.5,
        dispatch_ahead: float = DISPATCH_AHEAD,
        catchup_window: float = 60.0,
        clock: Callable[[], float] = time.time,
        placement: Placement | None = None,
        retry_backoff: tuple[float, float] = (1.0, 300.0),
        commit_records: Callable[[list[dict[str, Any]]], Any] | None = None,
    ) -> None:
        self.reader = reader
        self.write = write
        #: Commits execution records at once (``Recorder.commit_now``, with the retention
        #: settings); ``record`` only queues them. Tests may leave it to a bare ``record`` write.
        self.commit_records = commit_records or (lambda events: write("record", {"executions": events}))
        self.runner = runner
        self.placement = placement or Placement(runner, node_name)
        self.record = record
        self.node_name = node_name
        self.lookahead_ms = int(lookahead * 1000)
        #: Runs of a whole second are sent this early and held by their node until the second:
        #: the leader's, the network's and the node's acceptance work leave the burst.
        self.dispatch_ahead_ms = int(dispatch_ahead * 1000)
        self.catchup_window_ms = int(catchup_window * 1000)
        #: (base, cap) in seconds; replicated by each new leader, read by the state machine.
        self.retry_backoff_ms = (int(retry_backoff[0] * 1000), int(retry_backoff[1] * 1000))
        self.clock = clock
        self._changes: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._leading = threading.Event()
        #: Counts this node's terms in office. A leader deposed and re-elected while the planner
        #: was blocked (e.g. in a Raft write) must take over again: its dispatcher dropped the
        #: launches it had queued, and only a fresh takeover adopts them.
        self._term_in_office = 0
        self._stop = threading.Event()
        self._jobs: dict[str, _Entry] = {}
        self._versions = itertools.count(1)
        self._plan: list[tuple[int, int, str, int]] = []  # (fire_ms, seq, job, version)
        self._due: list[tuple[int, int, RunSpec]] = []  # committed, waiting for their second
        self._due_lock = threading.Condition()
        self._seq = itertools.count()
        self.paused = False
        #: This leader's epoch (its Raft term when it took office); every launch carries it and
        #: the state machine refuses launches from an older epoch.
        self.epoch: int | None = None
        self._retired = False
        #: Called in the planner thread when this node starts leading, before it plans anything
        #: (the cluster layer reloads its membership there).
        self.on_leadership: Callable[[], None] = lambda: None
        #: Checked right before each dispatch: False while this leader's lease is not fresh
        #: (the run then waits; if leadership was lost, it is dropped and the new leader adopts it).
        self.can_dispatch: Callable[[], bool] = lambda: True
        self._threads = [
            threading.Thread(target=self._planner, name="scheduler-plan", daemon=True),
            threading.Thread(target=self._dispatcher, name="scheduler-dispatch", daemon=True),
        ]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._leading.clear()
        self._wake.set()
        with self._due_lock:
            self._due_lock.notify_all()
        for thread in self._threads:
            thread.join(5)

    def retire(self) -> None:
        """Stop scheduling for good (the node is stopping): a later re-election is ignored."""
        self._retired = True
        self.set_leader(False)

    def set_leader(self, leading: bool) -> None:
        """Called when Raft leadership changes (from the tick thread: must not block)."""
        if leading and not self._retired:
            if not self._leading.is_set():
                self._term_in_office += 1
            self._leading.set()
        else:
            self._leading.clear()
        self._wake.set()
        with self._due_lock:
            self._due_lock.notify_all()

    def job_changed(self, name: str) -> None:
        """Called after a job write is applied (tick thread: just queue it)."""
        self._changes.put(name)
        self._wake.set()

    # -- planning ----------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _load(self, job: dict[str, Any]) -> _Entry | None:
        if job.get("disabled"):
            return None
        try:
            timing = timing_for(job)
        except ScheduleError:
            log.error(
                "job %s has an unparseable schedule %r; not scheduled",
                job["name"],
                job["schedule"],
                extra=about(job["name"]),
            )
            return None
        return _Entry(job, timing, next(self._versions)) if timing is not None else None

    def next_fire(self, entry: _Entry, after_ms: int) -> int | None:
        """The job's next effective fire time strictly after ``after_ms`` (window and jitter applied)."""
        return next_fire(entry.timing, after_ms)

    def _first_after(self, entry: _Entry, last: int | None, now_ms: int) -> int | None:
        """Where a job's ticks resume: after its last committed tick, else after now. A one-shot
        (``@at``) never launched whose time passed less than ``catchup_window`` ago still fires."""
        if last:
            return last
        if entry.timing.one_shot:
            return now_ms - self.catchup_window_ms
        return now_ms

    def _push(self, entry: _Entry, fire: int | None) -> None:
        if fire is not None:
            heapq.heappush(self._plan, (fire, next(self._seq), entry.job["name"], entry.version))

    def _reload(self, name: str, now_ms: int) -> None:
        job = self.reader.get_job(name, with_children=False)
        entry = self._load(job) if job else None
        if entry is None:
            self._jobs.pop(name, None)
            return
        self._jobs[name] = entry
        last = job.get("_last_scheduled_ms") or 0
        self._push(entry, self.next_fire(entry, max(now_ms, last) if last else self._first_after(entry, None, now_ms)))

    def _become_leader(self) -> None:
        """Rebuild the plan from the store and reconcile what the previous leader left."""
        self.on_leadership()
        self._plan.clear()
        self._jobs.clear()
        with self._due_lock:
            # Queued by an earlier term in office, if any; every one of them is a committed
            # launch or claimed follow-up that the reconciliation below adopts again.
            self._due.clear()
        while not self._changes.empty():
            self._changes.get_nowait()
        now = self._now_ms()
        self._replicate_retry_backoff()
        # Jobs first: adopted launches are dispatched against the loaded jobs (a launch of a job
        # not loaded is taken for one deleted or disabled since, and dropped).
        jobs = self.reader.schedulable_jobs()
        entries = [(job, entry) for job in jobs if (entry := self._load(job)) is not None]
        for job, entry in entries:
            self._jobs[job["name"]] = entry
        adopted = self._unstarted_launches(now)
        catchups, missed = [], []
        for job, entry in entries:
            last = job.get("_last_scheduled_ms")
            # Ticks after the last one committed and up to now fell in a gap (restart, failover).
            fire = self.next_fire(entry, self._first_after(entry, last, now))
            gap: list[int] = []
            while fire is not None and fire <= now and len(gap) < MAX_MISSED_COUNTED:
                gap.append(fire)
                fire = self.next_fire(entry, fire)
            if gap and self.paused:
                gap = []  # ticks skipped on purpose while scheduling is paused: neither run nor missed
            if gap:
                run, gap = self._catchup_ticks(job, gap, now, adopted.keys())
                catchups += [self._launch(entry, tick, "catchup") for tick in run]
                if gap:
                    missed.append(self._missed(job["name"], gap, now))
            self._push(entry, fire)
        if missed:
            # Committed first, before this leader starts or launches anything: a launch (the
            # catch-up's, or the next tick's) moves the job's last scheduled tick past the gap,
            # so a missed record still queued in the recorder when this process died would leave
            # the gap's ticks neither run nor reported. The record moves the last scheduled tick
            # itself: a takeover retried after this write failed reports the same ticks, once.
            # Failing, it raises: the planner then takes over again, or the next leader does.
            self._write_while_leading(lambda: self.commit_records(missed))
        self._reconcile_running()
        for spec in adopted.values():
            self._queue(spec, max(spec.scheduled_ms, now))
        self._adopt_followups(now)
        if catchups:
            self._commit(catchups, now)
        log.info(
            "scheduler active: %d jobs, %d catch-up runs, %d jobs with missed ticks",
            len(self._jobs),
            len(catchups),
            len(missed),
        )

    def _catchup_ticks(
        self, job: dict[str, Any], gap: list[int], now: int, adopted: Container[tuple[str, int]]
    ) -> tuple[list[int], list[int]]:
        """Split the ticks missed in a gap into (to run now, to record as missed), per the job's
        ``catchup`` policy; only ticks within the catch-up window may run."""
        policy = job.get("catchup") or "latest"
        eligible = [t for t in gap if now - t <= self.catchup_window_ms and (job["name"], t) not in adopted]
        if policy == "none" or not eligible:
            run = []
        elif policy == "all":
            run = eligible[-MAX_CATCHUP_RUNS:]
        else:
            run = eligible[-1:]
        chosen = set(run)
        return run, [t for t in gap if t not in chosen]

    def _reconcile_running(self) -> None:
        for ex in self.reader.running_executions():
            if ex["node_name"] == self.node_name and not self.runner.is_running(ex["job_name"], ex["id"]):
                if self.retry_unstarted(ex):
                    continue
                self.record(self._lost(ex, "the agent stopped while this ran; outcome unknown"))

    def retry_unstarted(self, ex: dict[str, Any]) -> bool:
        """Send a tick's run again to the node that restarted without it; True if it took it.

        A run is reported running as soon as its node accepts it, up to half a second before
        its time. If the node dies meanwhile, the run never starts, and the node no longer
        knows it. Its run ledger tells the two cases apart: it refuses a run that did start
        there (the caller then records it lost: its outcome is unknown) and takes one that
        never did, which starts now. Only ticks within the catch-up window, as for any launch
        a new leader adopts. The node takes it under the same execution id, so its records
        replace the one left running.
        """
        if ex.get("kind") not in ("scheduled", "catchup") or not ex.get("scheduled_at") or not ex.get("run_id"):
            return False
        scheduled_ms = round(parse_time(ex["scheduled_at"]).timestamp() * 1000)
        now = self._now_ms()
        if now - scheduled_ms > self.catchup_window_ms:
            return False
        job = self.reader.get_job(ex["job_name"])
        if job is None or job.get("disabled") or self.paused:
            return False
        spec = RunSpec(
            job=job,
            run_id=ex["run_id"],
            execution_id=ex["id"],
            node_name=ex["node_name"],
            kind=ex["kind"],
            scheduled_ms=scheduled_ms,
            attempt=ex.get("attempt") or 1,
            group=ex.get("group") or scheduled_ms * 1_000_000,
            # Back before its second (a quick restart): it waits for it again, never starts early.
            start_at=scheduled_ms / 1000 if scheduled_ms > now else 0.0,
        )
        if self.placement.submit(spec) != "started":
            return False
        log.info(
            "run %s was never started by %s (it restarted): started it again",
            ex["run_id"],
            ex["node_name"],
            extra=about(ex["job_name"], ex["run_id"]),
        )
        return True

    def _unstarted_launches(self, now: int) -> dict[tuple[str, int], RunSpec]:
        """Committed launches that never started, by (job, tick): the takeover adopts them."""
        adopted = {}
        for launch in self.reader.unstarted_launches_since(now - self.catchup_window_ms):
            job = self.reader.get_job(launch["job"])
            if job is not None:
                adopted[(launch["job"], launch["scheduled_ms"])] = self._spec(job, launch)
        return adopted

    def _spec(self, job: dict[str, Any], launch: dict[str, Any]) -> RunSpec:
        return RunSpec(
            job=job,
            run_id=launch["run_id"],
            execution_id=launch["execution_id"],
            node_name=launch["node"],
            kind="scheduled" if launch["kind"] == "tick" else launch["kind"],  # a stored slot name
            scheduled_ms=launch["scheduled_ms"],
            group=launch["scheduled_ms"] * 1_000_000,
        )

    def _launch(self, entry: _Entry, fire: int, kind: str = "scheduled") -> dict[str, Any]:
        name = entry.job["name"]
        return {
            "job": name,
            "scheduled_ms": fire,
            "kind": kind,
            # Targets are chosen when the launch is committed: a new leader re-dispatches a
            # launch to the same node, whose run ledger refuses it if it already started.
            "node": ",".join(self.placement.targets(entry.job)),
            "run_id": run_id_for(name, fire),
            "execution_id": f"{fire * 1_000_000}",
        }

    def _missed(self, job: str, ticks: list[int], now: int) -> dict[str, Any]:
        first, last = format_time(_dt(ticks[0])), format_time(_dt(ticks[-1]))
        return {
            "id": f"{ticks[-1] * 1_000_000}-missed",
            "job_name": job,
            "run_id": run_id_for(job, ticks[-1]),
            "status": "missed",
            "missed": len(ticks),
            "last_tick_ms": ticks[-1],
            "kind": "scheduled",
            "node_name": self.node_name,
            "scheduled_at": last,
            "started_at": format_time(_dt(now)),
            "finished_at": format_time(_dt(now)),
            "error": f"{len(ticks)} tick(s) from {first} to {last} missed while no leader was scheduling",
        }

    def _failed(self, spec: RunSpec, reason: str, status: str = "failed") -> dict[str, Any]:
        return {
            **self._skipped(spec, reason),
            "status": status,
            "success": False,
            "output": reason,
            "attempt": spec.attempt,
            "group": spec.group,
        }

    def _skipped(self, spec: RunSpec, reason: str) -> dict[str, Any]:
        now = format_time(_dt(self._now_ms()))
        return {
            "id": spec.execution_id,
            "job_name": spec.job["name"],
            "run_id": spec.run_id,
            "status": "skipped",
            "kind": spec.kind,
            "node_name": spec.node_name,
            "scheduled_at": format_time(_dt(spec.scheduled_ms)) if spec.scheduled_ms else None,
            "started_at": now,
            "finished_at": now,
            "error": reason,
        }

    def _lost(self, ex: dict[str, Any], reason: str) -> dict[str, Any]:
        return {
            **ex,
            "status": "lost",
            "success": False,
            "finished_at": format_time(_dt(self._now_ms())),
            "error": reason,
            "output": f"{reason}\n{ex.get('output') or ''}",
        }

    def _commit(self, launches: list[dict[str, Any]], now: int) -> None:
        """Commit launch intents in commands of at most ``LAUNCH_BATCH`` and queue the accepted.

        Bounded because every server applies a command in one go on its Raft thread, sending no
        heartbeat meanwhile (5,000 launches took 0.1 s even on an idle host)."""
        for start in range(0, len(launches), LAUNCH_BATCH):
            self._commit_batch(launches[start : start + LAUNCH_BATCH], now)

    def _commit_batch(self, launches: list[dict[str, Any]], now: int) -> None:
        """Commit launch intents (retrying with the same proposal id) and queue the accepted."""
        schedule_state: dict[str, dict[str, Any]] = {}
        for launch in launches:
            entry = self._jobs.get(launch["job"])
            if entry is None or launch["kind"] == "manual":
                continue
            nxt = self.next_fire(entry, launch["scheduled_ms"])
            state = schedule_state.setdefault(launch["job"], {"last_scheduled_ms": 0})
            state["last_scheduled_ms"] = max(state["last_scheduled_ms"], launch["scheduled_ms"])
            state["next"] = format_time(_dt(nxt)) if nxt else None
        payload = {
            "launches": launches,
            "epoch": self.epoch,
            "proposal": uuid.uuid4().hex,
            "now_ms": now,
            "schedule_state": schedule_state,
            "prune_before_ms": now - LAUNCH_RETENTION_MS,
        }
        try:
            result = self._write_while_leading(lambda: self.write("launch", payload))
        except NotLeading:
            return  # a new leader adopts whatever committed
        except StoreUnavailable as exc:
            log.error("could not commit %d launches: %s", len(launches), exc)
            return
        accepted = set(result.get("accepted", ())) if isinstance(result, dict) else set()
        for launch in launches:
            if launch["run_id"] in accepted:
                entry = self._jobs.get(launch["job"])
                job = entry.job if entry else self.reader.get_job(launch["job"])
                if job is not None:
                    self._queue(self._spec(job, launch), launch["scheduled_ms"])

    def _planner(self) -> None:
        while not self._stop.is_set():
            if not self._leading.wait(0.5):
                continue
            term = self._term_in_office
            try:
                self._become_leader()
                while self._leading.is_set() and self._term_in_office == term and not self._stop.is_set():
                    self._plan_once()
            except StoreUnavailable as exc:
                # Leadership lost (or no quorum) while taking over: the next leader takes over instead.
                log.warning("scheduler paused: %s", exc)
                time.sleep(0.5)
            except Exception:
                log.exception("scheduler planning failed; restarting it")
                time.sleep(0.5)

    def _plan_once(self) -> None:
        now = self._now_ms()
        while True:
            try:
                name = self._changes.get_nowait()
            except queue.Empty:
                break
            self._reload(name, now)
        horizon = now + self.lookahead_ms
        launches = []
        while self._plan and self._plan[0][0] <= horizon and len(launches) < 10_000:
            fire, _, name, version = heapq.heappop(self._plan)
            entry = self._jobs.get(name)
            if entry is None or entry.version != version:
                continue  # the job changed or was removed since this was planned
            if not self.paused:
                launches.append(self._launch(entry, fire))
            self._push(entry, self.next_fire(entry, fire))
        if launches:
            self._commit(launches, now)
            return
        wait = (self._plan[0][0] - self.lookahead_ms - self._now_ms()) / 1000 if self._plan else 1.0
        later = self._plan_followups(now)  # retries and dependent runs that fall due
        if later is not None:
            wait = min(wait, (later - self.lookahead_ms - self._now_ms()) / 1000)
        self._wake.wait(max(0.0, min(wait, 1.0)))
        self._wake.clear()

    # -- dispatch ----------------------------------------------------------------------------
    def _queue(self, spec: RunSpec, at_ms: int, *, early: bool = True) -> None:
        if early and self._may_start_early(spec):
            at_ms -= self.dispatch_ahead_ms
        with self._due_lock:
            heapq.heappush(self._due, (at_ms, next(self._seq), spec))
            self._due_lock.notify()

    @staticmethod
    def _may_start_early(spec: RunSpec) -> bool:
        """May this run be sent ahead, to be held by its node until its second? Only a plain
        scheduled run of a job whose runs may overlap: a ``forbid`` or ``replace`` policy must
        be judged at the second itself, and follow-ups and manual runs are not on a second."""
        return (
            spec.kind in ("scheduled", "catchup")
            and not spec.force
            and (spec.job.get("concurrency") or "allow") == "allow"
        )

    def _dispatcher(self) -> None:
        while not self._stop.is_set():
            with self._due_lock:
                if not self._due:
                    self._due_lock.wait(0.5)
                    continue
                if not self._leading.is_set():
                    self._due.clear()  # a former leader never dispatches; the new one adopts
                    continue
                wait = (self._due[0][0] - self.clock() * 1000) / 1000
                if wait > 0:
                    self._due_lock.wait(min(wait, 0.5))
                    continue
                if not self.can_dispatch():
                    self._due_lock.wait(0.01)
                    continue
                _, _, spec = heapq.heappop(self._due)
            self._dispatch(spec)

    def _dispatch(self, spec: RunSpec) -> None:
        name = spec.job["name"]
        current = self._jobs.get(name)
        if spec.kind in FOLLOWUP_KINDS:
            job = self.reader.get_job(name, with_children=False)  # children are never in the plan
            if job is None or not followups.exists(self.reader.db, spec.run_id, spec.attempt):
                return  # the job was deleted since (perhaps re-created under the same name)
            if job.get("disabled"):
                self.record(self._skipped(spec, f"skipped: the job is disabled (this was a {spec.kind} run)"))
                return
            if spec.kind == "dependent" and (outside := self._outside_window(job)):
                self.record(self._skipped(spec, f"skipped: {outside} (this was a dependent run)"))
                return
            spec.job = job
        elif spec.kind != "manual":
            if current is None:
                return  # deleted or disabled after planning
            spec.job = current.job
        if self.paused and spec.kind != "manual":
            self.record(self._skipped(spec, "skipped: scheduling is paused (POST /v1/unpause?scheduling=true)"))
            return
        if spec.scheduled_ms > self._now_ms():  # sent ahead: its node holds it until its second
            if not self._may_start_early(spec):  # the job's policy changed since it was queued
                self._queue(spec, spec.scheduled_ms, early=False)
                return
            spec.start_at = spec.scheduled_ms / 1000
        policy = spec.job.get("concurrency")
        if not spec.force and policy in ("forbid", "replace") and name in self.placement.running_jobs():
            if policy == "forbid":
                self.record(self._skipped(spec, "skipped: the previous run is still running (concurrency: forbid)"))
            else:  # replace: kill, wait for the kill to land, then start (off the dispatcher thread)
                threading.Thread(target=self._replace, args=(spec,), name="scheduler-replace", daemon=True).start()
            return
        self._submit(spec)

    def _submit(self, spec: RunSpec) -> None:
        targets = [node for node in spec.node_name.split(",") if node]
        if not targets:
            self.record(self._failed(spec, f"no alive node matches the job's tags {spec.job.get('tags') or {}}"))
            return
        for node in targets:
            # One execution per target node; its id is Dkron's "<dispatch ns>-<node>".
            # Attempts of one run share its group; each attempt has its own execution id.
            one = replace(spec, node_name=node, execution_id=f"{spec.group + spec.attempt - 1}-{node}")
            outcome = self.placement.submit(one)
            if (
                outcome == "duplicate"
                and not self._started(one)
                # Queued again by a new term in office while it had just started here.
                and not self.runner.is_running(one.job["name"], one.execution_id)
            ):
                # Recorded "lost" (it may still be running there): never retried.
                self.record(
                    self._failed(one, "the run had started before its agent restarted; outcome unknown", status="lost")
                )
            elif outcome == "unreachable":
                self.record(self._failed(one, f"node {node} could not be reached to start the run"))

    def _outside_window(self, job: dict[str, Any]) -> str | None:
        """Why now is outside the job's starts_at/expires_at (None if inside), as Dkron checks for
        scheduled and dependent runs."""
        now = format_time(_dt(self._now_ms())) or ""
        if job.get("starts_at") and now < job["starts_at"]:
            return f"the job starts at {job['starts_at']}"
        if job.get("expires_at") and now > job["expires_at"]:
            return f"the job expired at {job['expires_at']}"
        return None

    def _started(self, spec: RunSpec) -> bool:
        if spec.kind in FOLLOWUP_KINDS:
            return followups.started(self.reader.db, spec.run_id, spec.attempt)
        return self.reader.launch_started(spec.run_id)

    def _mark_runs(self, runs: list[tuple[str, int]], mark: str) -> None:
        """Tell the state machine not to retry these attempts."""
        if not runs:
            return
        marks = [{"run_id": run_id, "attempt": attempt} for run_id, attempt in runs]
        try:
            self.write("mark_runs", {"runs": marks, "mark": mark, "now_ms": self._now_ms()})
        except StoreUnavailable as exc:
            log.warning("could not mark runs %s as %s: %s", marks, mark, exc)

    def _replace(self, spec: RunSpec, wait: float = 10.0) -> None:
        """``concurrency: replace``: kill the job's running executions, then start ``spec``."""
        name = spec.job["name"]
        victims = {e["id"]: e for e in self.reader.running_executions() if e["job_name"] == name}
        victims.update({e["id"]: e for e in self.placement.active() if e["job_name"] == name})
        runs = {(e["run_id"], e.get("attempt") or 1) for e in victims.values() if e.get("run_id")}
        self._mark_runs(sorted(runs), "killed")  # a run killed on purpose is not retried
        reason = f"replaced by run {spec.run_id} (concurrency: replace)"
        for execution_id in victims:
            self.placement.kill(name, execution_id, reason)
        deadline = time.monotonic() + wait
        while name in self.placement.running_jobs() and time.monotonic() < deadline:
            time.sleep(0.05)
        if name in self.placement.running_jobs():
            log.warning(
                "job %s: replaced executions still running after %.0fs; starting anyway", name, wait, extra=about(name)
            )
        if self._leading.is_set():
            self._submit(spec)

    # -- manual runs -------------------------------------------------------------------------
    def run_now(self, job: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
        """Commit a manual launch and dispatch it at once; returns its execution id and run id.

        The job's concurrency policy applies (forbid: refused; replace: the running execution is
        killed first) unless ``force`` is set."""
        name = job["name"]
        if not force and job.get("concurrency") == "forbid" and name in self.placement.running_jobs():
            raise RunRefused(f"job {name} is already running and its concurrency policy is forbid")
        targets = self.placement.targets(job)
        if not targets:
            raise RunRefused(f"no alive node matches the tags of job {name}: {job.get('tags') or {}}")
        now = self._now_ms()
        suffix = uuid.uuid4().hex[:6]
        launch = {
            "job": name,
            "scheduled_ms": now,
            "kind": "manual",
            "node": ",".join(targets),
            "run_id": f"{name}@manual-{now}-{suffix}",
            "execution_id": f"{now * 1_000_000}",
        }
        result = self.write("launch", {"launches": [launch], "epoch": self.epoch, "proposal": suffix, "now_ms": now})
        if launch["run_id"] not in (result or {}).get("accepted", ()):
            raise RunRefused(f"job {name} could not be launched (deleted meanwhile?)")
        spec = self._spec(job, launch)
        spec.scheduled_ms = 0  # manual: no scheduled time
        spec.force = force
        self._queue(spec, now)
        first = launch["node"].split(",")[0]
        return {"execution_id": f"{spec.group}-{first}", "run_id": launch["run_id"]}
