"""Runs due at a whole second are sent to their node ahead of it, and held there until it.

The leader's dispatch, the network and the node's acceptance then happen before the second, so
the second itself is left to starting processes (bench_cluster section a). Only runs whose
start needs no judgement at the second are sent ahead: a job with ``concurrency: forbid`` or
``replace`` is judged, and dispatched, at the second itself.

The scheduler runs against the real state machine; the placement only records what it is given.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scheduler_stubs import StubPlacement

from dkron.contracts import ExecutorRegistry, ProcessorRegistry
from dkron.runner import Runner, RunSpec
from dkron.scheduler import Scheduler
from dkron.store.queries import Reader
from dkron.store.state import StateMachine

NOW = "2026-01-01T00:00:00.000Z"


class Recorded(StubPlacement):
    def __init__(self) -> None:
        self.submitted: list[tuple[float, RunSpec]] = []
        self._lock = threading.Lock()

    def submit(self, spec: RunSpec) -> str:
        with self._lock:
            self.submitted.append((time.time(), spec))
        return "started"


def test_runs_of_overlapping_jobs_are_sent_ahead_and_forbid_jobs_at_their_second(tmp_path: Path) -> None:
    state = StateMachine(str(tmp_path / "state.db"))
    reader = Reader(str(tmp_path / "state.db"))
    index = itertools.count(1)
    lock = threading.Lock()

    def write(command: str, payload: dict[str, Any], **_: Any) -> Any:
        with lock:
            return state.apply(next(index), command, payload)

    placement = Recorded()
    runner = Runner("n1", ExecutorRegistry(), ProcessorRegistry(), record=lambda ex: None)
    scheduler = Scheduler(
        reader, write, runner, lambda ex: None, node_name="n1", placement=placement, dispatch_ahead=0.4
    )
    scheduler.on_leadership = lambda: write("set_epoch", {"epoch": 1})
    for name, policy in (("overlapping", "allow"), ("exclusive", "forbid"), ("replacing", "replace")):
        job = {"name": name, "schedule": "@every 1s", "executor": "shell", "parent_job": "", "concurrency": policy}
        write("put_job", {"job": {"displayname": "", "disabled": False, "metadata": {}, **job}, "now": NOW})
    scheduler.start()
    try:
        scheduler.set_leader(True)
        time.sleep(3.5)
    finally:
        scheduler.stop()
        runner.shutdown(0)

    by_job: dict[str, list[tuple[float, RunSpec]]] = {}
    for at, spec in placement.submitted:
        by_job.setdefault(spec.job["name"], []).append((at, spec))
    assert set(by_job) == {"overlapping", "exclusive", "replacing"}, by_job.keys()
    early = 0
    for at, spec in by_job["overlapping"]:
        second = spec.scheduled_ms / 1000
        if at >= second:  # dispatched late (a slow machine): then it must start at once
            assert spec.start_at == 0
            continue
        early += 1
        assert spec.start_at == second, "a run sent ahead must say when to start"
        assert at >= second - 0.4 - 0.1, f"sent {second - at:.3f}s ahead, not ~0.4s"
    assert early >= len(by_job["overlapping"]) - 1 >= 2, "the runs were not sent ahead of their second"
    for name in ("exclusive", "replacing"):
        for at, spec in by_job[name]:
            assert spec.start_at == 0
            assert at >= spec.scheduled_ms / 1000 - 0.005, f"{name} was dispatched before its second"


def test_a_run_sent_again_after_its_nodes_restart_keeps_its_second_and_only_within_the_window(tmp_path: Path) -> None:
    """``Scheduler.retry_unstarted``: a tick whose second has not come waits for it again (a
    quick restart must not start it early); a past tick starts at once; a tick older than the
    catch-up window, or a run that is not a tick, is not sent again."""
    state = StateMachine(str(tmp_path / "state.db"))
    reader = Reader(str(tmp_path / "state.db"))
    index = itertools.count(1)

    def write(command: str, payload: dict[str, Any], **_: Any) -> Any:
        return state.apply(next(index), command, payload)

    job = {"name": "j", "schedule": "@every 1s", "executor": "shell", "parent_job": "", "concurrency": "allow"}
    write("put_job", {"job": {"displayname": "", "disabled": False, "metadata": {}, **job}, "now": NOW})
    placement = Recorded()
    runner = Runner("n1", ExecutorRegistry(), ProcessorRegistry(), record=lambda ex: None)
    scheduler = Scheduler(
        reader, write, runner, lambda ex: None, node_name="n1", placement=placement, catchup_window=60
    )

    def left_running(seconds_from_now: float, kind: str = "scheduled") -> dict[str, Any]:
        tick = (int(time.time()) + round(seconds_from_now)) * 1000
        at = datetime.fromtimestamp(tick / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return {
            "id": f"{tick}000000-n1",
            "job_name": "j",
            "run_id": f"j@{tick}",
            "node_name": "n1",
            "kind": kind,
            "scheduled_at": at,
            "attempt": 1,
            "group": tick * 1_000_000,
        }

    try:
        ahead, past = left_running(2), left_running(-5)
        assert scheduler.retry_unstarted(ahead) and scheduler.retry_unstarted(past)
        assert not scheduler.retry_unstarted(left_running(-120)), "older than the catch-up window"
        assert not scheduler.retry_unstarted(left_running(-5, kind="manual")), "not a tick"
    finally:
        runner.shutdown(0)
    sent = {spec.run_id: spec for _, spec in placement.submitted}
    assert set(sent) == {ahead["run_id"], past["run_id"]}
    assert sent[ahead["run_id"]].start_at == int(ahead["run_id"].split("@")[1]) / 1000, "would start early"
    assert sent[past["run_id"]].start_at == 0
    assert sent[past["run_id"]].execution_id == past["id"], "its records must replace the one left running"
