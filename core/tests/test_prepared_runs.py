"""Held runs that their executor prepares ahead (``Executor.prepare``), in the real runner.

The shell executor spawns such a run's process early and starts it with one write at its
second. The runner must start prepared runs on time, never more at once than
``max_concurrent``, discard those killed before their time (even mid-preparation), and fall
back to ``execute`` when an executor declines or fails to prepare.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult, ExecutorRegistry, ProcessorRegistry
from dkron.runner import Runner, RunSpec
from dkron_executor_shell.executor import ShellExecutor


class Records:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, record: dict[str, Any]) -> None:
        with self.cond:
            self.items.append(record)
            self.cond.notify_all()

    def finals(self, count: int, timeout: float = 15.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                done = {r["id"]: r for r in self.items if r["status"] != "running"}
                if len(done) >= count or time.monotonic() > deadline:
                    return done
                self.cond.wait(0.1)


def _runner(executor: Any, records: Records, max_concurrent: int = 64) -> Runner:
    executors = ExecutorRegistry()
    executors.add("x", executor)
    return Runner("n1", executors, ProcessorRegistry(), records, max_concurrent=max_concurrent)


def _spec(i: int, config: dict[str, str], start_at: float) -> RunSpec:
    job = {"name": f"job-{i}", "executor": "x", "executor_config": config}
    return RunSpec(job=job, run_id=f"job-{i}@1", execution_id=f"e-{i}", node_name="n1", start_at=start_at)


def test_prepared_runs_start_at_their_time_and_never_more_at_once_than_allowed(tmp_path: Path) -> None:
    records = Records()
    shell = ShellExecutor()
    runner = _runner(shell, records, max_concurrent=2)
    log = tmp_path / "spans"
    config = shell.validate(
        {"command": f"echo b $(date +%s%N) >> {log}; sleep 0.2; echo e $(date +%s%N) >> {log}", "shell": "true"}
    )
    start_at = time.time() + 0.8
    try:
        runner.submit_many([(_spec(i, config, start_at), None) for i in range(6)])
        time.sleep(0.6)
        assert runner.prepared_runs == 2, "not prepared ahead, or more waiting than may run at once"
        assert not log.exists(), "a prepared run began before its time"
        done = records.finals(6)
        assert len(done) == 6 and all(r["success"] for r in done.values())
        assert runner.prepared_runs == 0
    finally:
        runner.shutdown(5)
    events = sorted(
        (int(ns), +1 if kind == "b" else -1) for kind, ns in (line.split() for line in log.read_text().splitlines())
    )
    assert events[0][0] / 1e9 >= start_at - 0.01, "a run began before its time"
    assert events[0][0] / 1e9 < start_at + 0.5
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2, f"{peak} runs at once with max_concurrent 2"


class SlowPreparer:
    """An executor whose ``prepare`` blocks until the test lets it go (a slow plugin)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.log: list[str] = []

    def validate(self, config: Any) -> dict[str, str]:
        return dict(config)

    def execute(self, request: ExecutionRequest, output: Any, cancel: CancelToken) -> ExecutionResult:
        self.log.append("execute")
        return ExecutionResult(success=True)

    def prepare(self, request: ExecutionRequest, output: Any, cancel: CancelToken) -> Any:
        self.entered.set()
        self.release.wait(10)
        mode = request.config.get("mode")
        if mode == "raise":
            raise RuntimeError("plugin bug")
        if mode == "decline":
            return None
        log = self.log

        class Prepared:
            def start(self) -> None:
                log.append("start")

            def wait(self) -> ExecutionResult:
                log.append("wait")
                output.write("prepared ran")
                return ExecutionResult(success=True)

            def discard(self) -> None:
                log.append("discard")

        return Prepared()


def test_a_run_killed_while_being_prepared_ends_at_once_and_is_discarded() -> None:
    records = Records()
    slow = SlowPreparer()
    runner = _runner(slow, records)
    try:
        runner.submit_many([(_spec(1, {}, time.time() + 3), None)])
        assert slow.entered.wait(5)
        asked = time.monotonic()
        assert runner.kill("job-1", "e-1")
        done = records.finals(1)["e-1"]
        assert time.monotonic() - asked < 1.5
        assert done["error"] == "killed before it started: killed by request"
        slow.release.set()
        deadline = time.monotonic() + 5
        while "discard" not in slow.log and time.monotonic() < deadline:
            time.sleep(0.02)
        assert slow.log == ["discard"]
        assert runner.prepared_runs == 0
    finally:
        slow.release.set()
        runner.shutdown(2)


def test_a_run_whose_time_came_while_it_was_prepared_starts_once_ready() -> None:
    records = Records()
    slow = SlowPreparer()
    runner = _runner(slow, records)
    try:
        runner.submit_many([(_spec(1, {}, time.time() + 0.3), None)])
        assert slow.entered.wait(5)
        time.sleep(0.5)  # past its time, still being prepared
        assert records.finals(1, timeout=0.2) == {}
        slow.release.set()
        done = records.finals(1)["e-1"]
        assert done["success"] and done["output"] == "prepared ran"
        assert slow.log == ["start", "wait"]
    finally:
        slow.release.set()
        runner.shutdown(2)


def test_a_plugin_that_declines_or_fails_to_prepare_still_runs_at_its_time() -> None:
    records = Records()
    slow = SlowPreparer()
    slow.release.set()
    runner = _runner(slow, records)
    start_at = time.time() + 0.5
    try:
        runner.submit_many([(_spec(i, {"mode": mode}, start_at), None) for i, mode in enumerate(("raise", "decline"))])
        done = records.finals(2)
        assert {r["id"]: r["success"] for r in done.values()} == {"e-0": True, "e-1": True}
        assert slow.log == ["execute", "execute"]
        for record in done.values():
            began = datetime.fromisoformat(record["started_at"].replace("Z", "+00:00")).timestamp()
            assert began >= start_at - 0.01, "a run began before its time"
    finally:
        runner.shutdown(2)


def test_a_run_held_when_its_node_dies_is_accepted_again_after_the_restart(tmp_path: Path) -> None:
    from dkron.ledger import RunLedger

    path = str(tmp_path / "started-runs.log")
    records = Records()
    shell = ShellExecutor()
    executors = ExecutorRegistry()
    executors.add("x", shell)
    config = shell.validate({"command": "true"})
    runner = Runner("n1", executors, ProcessorRegistry(), records, ledger=RunLedger(path))
    try:
        now = time.time()
        assert runner.submit_many([(_spec(0, config, now + 0.3), None), (_spec(1, config, now + 30), None)]) == [
            "started",
            "started",
        ]
        assert records.finals(1)["e-0"]["success"]
        assert runner.submit(_spec(1, config, now + 30)) == "duplicate"  # still waiting here
        # The node is killed now (nothing else is written); its next life reads the ledger.
        after_restart = Runner("n1", executors, ProcessorRegistry(), Records(), ledger=RunLedger(path))
        try:
            assert after_restart.submit(_spec(0, config, 0)) == "duplicate", "a run that started ran twice"
            assert after_restart.submit(_spec(1, config, 0)) == "started", "a run that never started was refused"
        finally:
            after_restart.shutdown(5)
    finally:
        runner.shutdown(5)
