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

    def run(self, job: str, run_id: str, execution_id: str, command: str) -> agent_pb2.AgentRunRequest:
        config = self.shell.validate({"command": command, "shell": "true"})
        return agent_pb2.AgentRunRequest(
            job=agent_pb2.JobSpec(name=job, executor="shell", executor_config=config),
            run_id=run_id,
            execution_id=execution_id,
            attempt=1,
        )

    def start(self, watch_id: str, runs: list[agent_pb2.AgentRunRequest]) -> list[tuple[str, int]]:
        answer = self.stub.StartRuns(agent_pb2.StartRunsRequest(runs=runs, watch_id=watch_id), timeout=TIMEOUT)
        return [(s.execution_id, s.outcome) for s in answer.starts]

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
