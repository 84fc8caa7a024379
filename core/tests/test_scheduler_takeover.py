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
