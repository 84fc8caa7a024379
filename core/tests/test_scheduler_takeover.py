"""A leader deposed and re-elected while its planner is busy must still launch every tick.

Seen in a CI chaos run: a restarted server called an election, the leader stepped down and won
again a few hundred milliseconds later, all while its planner was blocked in a Raft write. Its
dispatcher had dropped the launches it had queued (a former leader never dispatches), and the
planner, finding itself leader again, carried on without taking over anew: one committed tick
per job was neither run nor recorded.

The scheduler here runs against the real state machine; the write hook stages the flip inside
a Raft write exactly as it happened, which real processes only hit by chance.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler_stubs import StubPlacement

from dkron.contracts import ExecutorRegistry, ProcessorRegistry
from dkron.runner import Runner, RunSpec
from dkron.scheduler import Scheduler
from dkron.store.queries import Reader
from dkron.store.raft import StoreUnavailable
from dkron.store.state import StateMachine

NOW = "2026-01-01T00:00:00.000Z"


class Submissions(StubPlacement):
    """Where the scheduler's runs go: remembered and reported started, never executed (the test
    is about which ticks get dispatched, not about running them)."""

    def __init__(self, write: Callable[..., Any]) -> None:
        self.run_ids: list[str] = []
        self._lock = threading.Lock()
        self._write = write

    def submit(self, spec: RunSpec) -> str:
        with self._lock:
            self.run_ids.append(spec.run_id)
        started = {
            "id": spec.execution_id,
            "job_name": spec.job["name"],
            "run_id": spec.run_id,
            "node_name": spec.node_name,
            "status": "running",
            "started_at": NOW,
        }
        self._write("record", {"executions": [started]})
        return "started"

    def ticks(self) -> list[int]:
        with self._lock:
            return sorted(int(run_id.rpartition("@")[2]) for run_id in self.run_ids)


def test_a_leader_reelected_during_a_write_dispatches_the_launches_it_had_queued(tmp_path: Path) -> None:
    state = StateMachine(str(tmp_path / "state.db"))
    reader = Reader(str(tmp_path / "state.db"))
    index = iter(range(1, 1_000_000))
    lock = threading.Lock()
    launch_writes = 0
    flipped = threading.Event()
    scheduler: Scheduler

    def flip_leadership() -> None:
        """Deposed, the queued launches dropped by the dispatcher, then elected again."""
        scheduler.set_leader(False)
        deadline = time.monotonic() + 5
        while scheduler._due and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not scheduler._due, "the dispatcher of a former leader kept its queue"
        scheduler.set_leader(True)
        flipped.set()

    def write(command: str, payload: dict[str, Any], **_: Any) -> Any:
        nonlocal launch_writes
        if command == "launch":
            launch_writes += 1
            if launch_writes == 3:  # by now one committed tick waits in the dispatcher's queue
                flip_leadership()
        with lock:
            return state.apply(next(index), command, payload)

    placement = Submissions(write)
    runner = Runner("n1", ExecutorRegistry(), ProcessorRegistry(), record=lambda ex: None)
    scheduler = Scheduler(reader, write, runner, lambda ex: None, node_name="n1", placement=placement)
    scheduler.on_leadership = lambda: write("set_epoch", {"epoch": 1})
    job = {"name": "every-second", "schedule": "@every 1s", "executor": "shell", "parent_job": ""}
    write("put_job", {"job": {"displayname": "", "disabled": False, "metadata": {}, **job}, "now": NOW})
    scheduler.start()
    try:
        scheduler.set_leader(True)
        assert flipped.wait(10), "the planner never wrote its third launch"
        time.sleep(3.0)
    finally:
        scheduler.stop()
        runner.shutdown(0)

    ticks = placement.ticks()
    assert len(ticks) >= 4, ticks
    assert len(set(ticks)) == len(ticks), f"a tick was dispatched twice: {ticks}"
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b - a != 1000]
    assert not gaps, f"ticks neither dispatched nor recorded after the re-election: {gaps} in {ticks}"


class TakeoverAfterAGap:
    """A job ``every-second`` whose last committed tick was ``gap`` seconds ago, and a scheduler
    over the real state machine whose writes pass through ``before_write``."""

    def __init__(self, tmp_path: Path, gap: int) -> None:
        self.state = StateMachine(str(tmp_path / "state.db"))
        self.reader = Reader(str(tmp_path / "state.db"))
        self._index = iter(range(1, 1_000_000))
        self._lock = threading.Lock()
        self.before_write: Callable[[str, dict[str, Any]], None] = lambda command, payload: None
        self.last_tick = (int(time.time()) - gap) * 1000
        job = {"name": "every-second", "schedule": "@every 1s", "executor": "shell", "parent_job": ""}
        self.write("put_job", {"job": {"displayname": "", "disabled": False, "metadata": {}, **job}, "now": NOW})
        self.write("set_epoch", {"epoch": 1})
        last = {"every-second": {"last_scheduled_ms": self.last_tick, "next": None}}
        self.write("launch", {"launches": [], "epoch": 1, "proposal": "p0", "now_ms": 0, "schedule_state": last})
        self.placement = Submissions(self.write)
        self.runner = Runner("n1", ExecutorRegistry(), ProcessorRegistry(), record=lambda ex: None)
        # Queued records are dropped: what the recorder had not committed when the process died.
        self.scheduler = Scheduler(
            self.reader, self.write, self.runner, lambda ex: None, node_name="n1", placement=self.placement
        )
        self.scheduler.on_leadership = lambda: self.write("set_epoch", {"epoch": 2})

    def write(self, command: str, payload: dict[str, Any], **_: Any) -> Any:
        self.before_write(command, payload)
        return self.apply(command, payload)

    def apply(self, command: str, payload: dict[str, Any]) -> Any:
        """Commit straight to the state machine, as Raft would (no hook)."""
        with self._lock:
            return self.state.apply(next(self._index), command, payload)

    def take_over(self, until: Callable[[], bool]) -> None:
        self.scheduler.start()
        try:
            self.scheduler.set_leader(True)
            deadline = time.monotonic() + 10
            while not until() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            self.scheduler.stop()
            self.runner.shutdown(0)

    def missed_records(self) -> list[dict[str, Any]]:
        return [ex for ex in self.reader.list_executions("every-second")[0] if ex["status"] == "missed"]


def test_ticks_missed_in_a_gap_are_committed_before_the_catch_up_launch(tmp_path: Path) -> None:
    """Seen in CI: a server killed just as its catch-up run started came back with the ticks
    before it neither run nor reported missed. The missed record was still queued in the
    recorder when the catch-up launch moved the job's last scheduled tick past the gap."""
    takeover = TakeoverAfterAGap(tmp_path, gap=6)
    at_first_launch: list[int] = []

    def note_missed_count(command: str, payload: dict[str, Any]) -> None:
        if command == "launch" and not at_first_launch:
            at_first_launch.append(takeover.reader.get_job("every-second")["missed_count"])

    takeover.before_write = note_missed_count
    takeover.take_over(until=lambda: bool(takeover.placement.ticks()))

    catchup = takeover.placement.ticks()[0]
    gap = list(range(takeover.last_tick + 1000, catchup, 1000))
    assert len(gap) >= 4, (takeover.last_tick, catchup)
    assert at_first_launch == [len(gap)], "the catch-up launch was committed before the missed ticks"
    [missed] = takeover.missed_records()
    assert missed["run_id"] == f"every-second@{gap[-1]}", missed


def test_a_missed_record_whose_commit_outcome_was_unknown_counts_its_ticks_once(tmp_path: Path) -> None:
    takeover = TakeoverAfterAGap(tmp_path, gap=6)
    unknown = threading.Event()

    def applied_then_unknown(command: str, payload: dict[str, Any]) -> None:
        missed = [ex for ex in payload.get("executions", ()) if ex["status"] == "missed"]
        if command == "record" and missed and not unknown.is_set():
            unknown.set()
            takeover.apply(command, payload)
            raise StoreUnavailable("timed out waiting for the commit", unknown=True)

    takeover.before_write = applied_then_unknown
    takeover.take_over(until=lambda: bool(takeover.placement.ticks()))

    assert unknown.is_set()
    catchup = takeover.placement.ticks()[0]
    gap = list(range(takeover.last_tick + 1000, catchup, 1000))
    assert takeover.reader.get_job("every-second")["missed_count"] == len(gap)
    assert len(takeover.missed_records()) == 1
