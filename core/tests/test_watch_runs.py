"""The node's side of batched dispatch: ``StartRuns`` + ``WatchRuns`` on a real gRPC server.

A real ``AgentServicer`` with the real runner and shell executor, called over 127.0.0.1: many
runs start in one call and all their results come on one stream; a run id is never started
twice; output arrives while a run goes on; and a result whose stream is gone is handed to the
fallback delivery (``ExecutionDone`` in an agent) instead of being lost.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from dkron.cluster import watch
from dkron.cluster.agent_service import AgentServicer
from dkron.contracts import ExecutorRegistry, ProcessorRegistry
from dkron.proto import agent_pb2, agent_pb2_grpc
from dkron.runner import Runner
from dkron_executor_shell.executor import ShellExecutor

TIMEOUT = 15.0


class Node:
    def __init__(self) -> None:
        executors = ExecutorRegistry()
        executors.add("shell", ShellExecutor)
        self.shell = executors.get("shell")
        self.runner = Runner("n1", executors, ProcessorRegistry(), record=lambda record: None)
        self.orphaned: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.reported: list[dict[str, Any]] = []
        self.servicer = AgentServicer(self.runner, "n1", self.orphaned.put, on_reported=self.reported.append)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        assert port > 0
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)

    def run(
        self, job: str, run_id: str, execution_id: str, command: str, start_in_ms: int = 0
    ) -> agent_pb2.AgentRunRequest:
        config = self.shell.validate({"command": command, "shell": "true"})
        return agent_pb2.AgentRunRequest(
            job=agent_pb2.JobSpec(name=job, executor="shell", executor_config=config),
            run_id=run_id,
            execution_id=execution_id,
            attempt=1,
            start_in_ms=start_in_ms,
        )

    def start(self, watch_id: str, runs: list[agent_pb2.AgentRunRequest]) -> list[tuple[str, int]]:
        return [(s.execution_id, s.outcome) for s in self.start_answer(watch_id, runs)]

    def start_answer(self, watch_id: str, runs: list[agent_pb2.AgentRunRequest]) -> list[agent_pb2.RunStart]:
        answer = self.stub.StartRuns(agent_pb2.StartRunsRequest(runs=runs, watch_id=watch_id), timeout=TIMEOUT)
        return list(answer.starts)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(grace=None).wait(5)
        self.runner.shutdown(2)


class Stream:
    """A leader's WatchRuns stream, read in the background."""

    def __init__(self, node: Node, watch_id: str) -> None:
        self.call = node.stub.WatchRuns(agent_pb2.WatchRunsRequest(watch_id=watch_id))
        self.batches: list[agent_pb2.RunEvents] = []
        self.events: queue.SimpleQueue[agent_pb2.RunEvent] = queue.SimpleQueue()
        self.registered = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        assert self.registered.wait(TIMEOUT), "the node never registered the stream"

    def _read(self) -> None:
        try:
            for batch in self.call:
                self.batches.append(batch)
                self.registered.set()
                for event in batch.events:
                    self.events.put(event)
        except grpc.RpcError:
            pass

    def results(self, count: int) -> dict[str, agent_pb2.ExecutionFinished]:
        found: dict[str, agent_pb2.ExecutionFinished] = {}
        deadline = time.monotonic() + TIMEOUT
        while len(found) < count and time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event.WhichOneof("event") == "finished":
                found[event.execution_id] = event.finished
        return found

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(5)


@pytest.fixture
def node() -> Iterator[Node]:
    node = Node()
    try:
        yield node
    finally:
        node.close()


def test_a_batch_starts_in_one_call_and_every_result_comes_on_the_stream(node: Node) -> None:
    stream = Stream(node, "w-1")
    runs = [node.run(f"job-{i}", f"job-{i}@1000", f"1000-{i}", "echo $DKRON_RUN_ID") for i in range(40)]
    outcomes = node.start("w-1", runs)
    assert outcomes == [(f"1000-{i}", agent_pb2.RunStart.STARTED) for i in range(40)]
    results = stream.results(40)
    assert sorted(results) == sorted(f"1000-{i}" for i in range(40))
    for i in range(40):
        done = results[f"1000-{i}"]
        assert done.success and done.exit_code == 0 and done.started_at_ms > 0
        assert done.output_tail.decode().strip() == f"job-{i}@1000"
    assert len(node.reported) == 40  # held by the node until a leader confirms them
    assert node.orphaned.empty()

    # The same run ids again (a new leader re-dispatching): refused, nothing runs twice.
    again = node.start("w-1", [node.run(f"job-{i}", f"job-{i}@1000", f"2000-{i}", "echo again") for i in range(40)])
    assert {outcome for _, outcome in again} == {agent_pb2.RunStart.DUPLICATE}
    time.sleep(0.5)
    assert stream.events.empty()
    stream.cancel()


def test_output_arrives_while_the_run_goes_on(node: Node) -> None:
    stream = Stream(node, "w-2")
    started = time.monotonic()
    node.start("w-2", [node.run("slow", "slow@1", "1-a", "echo first; sleep 1.5; echo second")])
    chunk = None
    while time.monotonic() - started < TIMEOUT:
        event = stream.events.get(timeout=TIMEOUT)
        if event.WhichOneof("event") == "output":
            chunk = (event.output.chunk, time.monotonic() - started)
            break
        assert event.WhichOneof("event") != "finished", "the result came before any output"
    assert chunk is not None and chunk[0] == b"first\n"
    assert chunk[1] < 1.2, f"the first output arrived {chunk[1]:.2f}s after the start, not while it ran"
    (done,) = stream.results(1).values()
    assert done.output_tail == b"first\nsecond\n"
    stream.cancel()


def test_a_result_whose_stream_is_gone_goes_to_the_fallback_delivery(node: Node) -> None:
    stream = Stream(node, "w-3")
    node.start("w-3", [node.run("cut", "cut@1", "1-a", "sleep 1; echo done")])
    stream.cancel()  # the leader went away mid-run
    record = node.orphaned.get(timeout=TIMEOUT)
    assert (record["id"], record["status"], record["output"]) == ("1-a", "success", "done\n")

    # A start naming a stream that is not open here: the run still runs, its result is delivered.
    assert node.start("nobody", [node.run("cut", "cut@2", "2-a", "echo alone")]) == [
        ("2-a", agent_pb2.RunStart.STARTED)
    ]
    record = node.orphaned.get(timeout=TIMEOUT)
    assert (record["id"], record["output"]) == ("2-a", "alone\n")


def test_a_run_sent_ahead_is_held_until_its_time(node: Node, tmp_path: Any) -> None:
    """The leader sends the runs of a whole second early (``start_in_ms``): the node accepts them
    at once (a second dispatch is a duplicate even while held) and starts them on time."""
    stream = Stream(node, "w-4")
    marker = tmp_path / "ran"
    sent = time.time()
    (answer,) = node.start_answer(
        "w-4", [node.run("early", "early@5", "5-a", f"date +%s%N > {marker}; echo ran", start_in_ms=800)]
    )
    assert answer.outcome == agent_pb2.RunStart.STARTED
    assert answer.started_at_ms / 1000 == pytest.approx(sent + 0.8, abs=0.15)  # the planned start
    assert {e["id"] for e in node.runner.active()} == {"5-a"}  # listed as running: not lost
    time.sleep(0.4)
    assert not marker.exists(), "the run started on arrival, not at its time"
    assert node.runner.prepared_runs == 1  # its process is spawned, waiting for its second
    assert node.start("w-4", [node.run("early", "early@5", "5-b", "echo twice")]) == [
        ("5-b", agent_pb2.RunStart.DUPLICATE)
    ]
    (done,) = stream.results(1).values()
    assert done.success and done.output_tail == b"ran\n"
    began = int(marker.read_text()) / 1e9
    assert sent + 0.8 - 0.05 <= began <= sent + 0.8 + 1.0, began - sent
    assert done.started_at_ms / 1000 >= sent + 0.75  # the record says when it really started
    stream.cancel()


def test_a_held_run_that_is_killed_never_starts(node: Node, tmp_path: Any) -> None:
    stream = Stream(node, "w-5")
    marker = tmp_path / "ran"
    node.start("w-5", [node.run("held", "held@6", "6-a", f"touch {marker}", start_in_ms=3000)])
    asked = time.monotonic()
    kill = agent_pb2.KillRequest(execution_id="6-a", job_name="held", reason="killed by request")
    assert node.stub.KillExecution(kill, timeout=TIMEOUT).found
    (done,) = stream.results(1).values()
    assert time.monotonic() - asked < 1.5, "a killed held run was only finished at its start time"
    assert not done.success and done.error == "killed before it started: killed by request"
    assert node.runner.active() == []
    time.sleep(3.2)
    assert not marker.exists()
    stream.cancel()


def test_stopping_finishes_held_runs_without_starting_them(tmp_path: Any) -> None:
    node = Node()
    marker = tmp_path / "ran"
    try:
        node.start("nobody", [node.run("held", "held@7", "7-a", f"touch {marker}", start_in_ms=4000)])
        node.runner.shutdown(0.2)  # its grace ends long before the run's time
        record = node.orphaned.get(timeout=TIMEOUT)
        assert record["status"] == "failed"
        assert record["error"] == "killed before it started: agent shutting down"
        time.sleep(4.2)
        assert not marker.exists()
    finally:
        node.channel.close()
        node.server.stop(grace=None).wait(5)


def test_results_wait_while_runs_are_starting_but_not_for_long(node: Node, monkeypatch: Any) -> None:
    """Results are sent once no run has begun for a moment (the CPU goes to a burst of starts
    first), but never later than ``FINALS_MAX_HOLD`` after they are ready."""
    # A run starts every ~20 ms below; a quiet time this long keeps a slow CI machine "busy".
    monkeypatch.setattr(watch, "FINALS_QUIET", 0.5)
    stream = Stream(node, "w-8")
    node.start("w-8", [node.run("quick", "quick@8", "8-a", "true")])
    done_at = None
    deadline = time.monotonic() + TIMEOUT
    while done_at is None and time.monotonic() < deadline:  # idle node: the result comes at once
        if stream.results(1):
            done_at = time.monotonic()
    assert done_at is not None

    node.start("w-8", [node.run("quick", "quick@9", "9-a", "true")])
    first = time.monotonic()
    got: dict[str, Any] = {}
    i = 0
    while not got and time.monotonic() - first < watch.FINALS_MAX_HOLD + 2:  # keep starting runs
        node.start("w-8", [node.run("busy", f"busy@{i}", f"b-{i}", "true")])
        i += 1
        time.sleep(0.01)
        while not stream.events.empty():
            event = stream.events.get()
            if event.WhichOneof("event") == "finished" and event.execution_id == "9-a":
                got["at"] = time.monotonic()
    assert got, "a result was held for good while runs kept starting"
    held = got["at"] - first
    assert watch.FINALS_MAX_HOLD - 0.3 < held < watch.FINALS_MAX_HOLD + 0.8, f"held {held:.2f}s"
    stream.cancel()
