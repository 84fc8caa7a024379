"""The inter-node gRPC protocol (protos/dkron/v1/*.proto, generated into dkron.proto).

(a) The committed generated code is exactly what ``scripts/gen-protos`` produces now.
(b) The generated code works end to end: a real server and client on 127.0.0.1.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from dkron.proto import agent_pb2, agent_pb2_grpc, cluster_pb2, cluster_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
GEN_SCRIPT = ROOT / "scripts" / "gen-protos"
COMMITTED_DIR = ROOT / "core" / "src" / "dkron" / "proto"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
RPC_TIMEOUT = 10


def _generated_files(directory: Path) -> dict[str, Path]:
    return {path.name: path for pattern in GENERATED_PATTERNS for path in directory.glob(pattern)}


def _committed_generator_version() -> str:
    for path in COMMITTED_DIR.glob("*_pb2_grpc.py"):
        match = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", path.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    return "unknown"


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip(
            "grpcio-tools is not installed in this interpreter (it is a dev dependency; run "
            "scripts/dev setup), so the generated gRPC code cannot be regenerated and compared"
        )
    result = subprocess.run(
        ["bash", str(GEN_SCRIPT), "--out", str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"scripts/gen-protos failed:\n{result.stdout}{result.stderr}"

    fresh = _generated_files(tmp_path / "dkron" / "proto")
    committed = _generated_files(COMMITTED_DIR)
    assert fresh, "scripts/gen-protos --out produced no files"
    stale = sorted(
        name
        for name in fresh.keys() | committed.keys()
        if name not in fresh or name not in committed or fresh[name].read_bytes() != committed[name].read_bytes()
    )
    if not stale:
        return

    detail = []
    for name in stale:
        if name not in committed:
            detail.append(f"  {name}: missing from core/src/dkron/proto")
        elif name not in fresh:
            detail.append(f"  {name}: no longer generated (its .proto was removed or renamed)")
        else:
            diff = difflib.unified_diff(
                committed[name].read_text().splitlines(),
                fresh[name].read_text().splitlines(),
                f"committed/{name}",
                f"regenerated/{name}",
                lineterm="",
                n=1,
            )
            detail.append(f"  {name}: differs\n" + "\n".join(list(diff)[:30]))
    installed = importlib.metadata.version("grpcio-tools")
    committed_version = _committed_generator_version()
    version_note = (
        ""
        if installed == committed_version
        else f"\nNote: the committed files were generated with grpcio-tools {committed_version}, this "
        f"environment has {installed}; run scripts/dev setup to get the locked version unless you "
        "are upgrading it on purpose."
    )
    pytest.fail(
        "The generated gRPC code in core/src/dkron/proto is stale: it does not match what "
        "protos/dkron/v1/*.proto generate now. Run scripts/gen-protos and commit the result.\n"
        + "\n".join(detail)
        + version_note,
        pytrace=False,
    )


class TinyAgent(agent_pb2_grpc.AgentServiceServicer):
    """Answers a canned batch start and streams canned events: output chunks, then a result."""

    CHUNKS = (b"hello ", b"world\n")

    def __init__(self) -> None:
        self.requests: list[agent_pb2.StartRunsRequest] = []

    def StartRuns(
        self, request: agent_pb2.StartRunsRequest, context: grpc.ServicerContext
    ) -> agent_pb2.StartRunsResponse:
        self.requests.append(request)
        starts = [
            agent_pb2.RunStart(execution_id=run.execution_id, outcome=agent_pb2.RunStart.STARTED, started_at_ms=1_000)
            for run in request.runs
        ]
        starts[-1].outcome = agent_pb2.RunStart.DUPLICATE
        return agent_pb2.StartRunsResponse(starts=starts)

    def WatchRuns(
        self, request: agent_pb2.WatchRunsRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.RunEvents]:
        yield agent_pb2.RunEvents()
        offset, events = 0, []
        for chunk in self.CHUNKS:
            output = agent_pb2.ExecutionOutput(chunk=chunk, offset=offset)
            events.append(agent_pb2.RunEvent(execution_id="exec-1", job_name="backup", output=output))
            offset += len(chunk)
        yield agent_pb2.RunEvents(events=events)
        finished = agent_pb2.ExecutionFinished(
            success=True,
            exit_code=0,
            finished_at_ms=2_000,
            started_at_ms=1_000,
            output_tail=b"".join(self.CHUNKS),
            output_truncated=False,
            output_bytes_total=offset,
        )
        yield agent_pb2.RunEvents(
            events=[agent_pb2.RunEvent(execution_id="exec-1", job_name="backup", finished=finished)]
        )

    def KillExecution(self, request: agent_pb2.KillRequest, context: grpc.ServicerContext) -> agent_pb2.KillResponse:
        return agent_pb2.KillResponse(found=request.execution_id == "exec-1")

    def ActiveExecutions(
        self, request: empty_pb2.Empty, context: grpc.ServicerContext
    ) -> agent_pb2.ActiveExecutionsResponse:
        return agent_pb2.ActiveExecutionsResponse(
            executions=[agent_pb2.ActiveExecution(execution_id="exec-1", job_name="backup", run_id="run-1")]
        )


@pytest.fixture
def agent_server() -> Iterator[tuple[TinyAgent, str]]:
    servicer = TinyAgent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0, "could not bind a port on 127.0.0.1"
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(5)


def test_a_batch_start_and_the_runs_stream_cross_the_wire(agent_server: tuple[TinyAgent, str]) -> None:
    servicer, address = agent_server
    run = agent_pb2.AgentRunRequest(
        job=agent_pb2.JobSpec(
            name="backup",
            executor="shell",
            executor_config={"command": "echo hello world"},
            processors={"log": agent_pb2.ProcessorConfig(config={"forward": "true"})},
            metadata={"team": "ops"},
        ),
        run_id="run-1",
        execution_id="exec-1",
        attempt=1,
        scheduled_at_ms=0,
        timeout_ms=30_000,
    )
    again = agent_pb2.AgentRunRequest(job=run.job, run_id="run-1", execution_id="exec-2")
    request = agent_pb2.StartRunsRequest(runs=[run, again], watch_id="w-1")
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        batches = list(stub.WatchRuns(agent_pb2.WatchRunsRequest(watch_id="w-1"), timeout=RPC_TIMEOUT))
        answer = stub.StartRuns(request, timeout=RPC_TIMEOUT)

    assert [(s.execution_id, s.outcome, s.started_at_ms) for s in answer.starts] == [
        ("exec-1", agent_pb2.RunStart.STARTED, 1_000),
        ("exec-2", agent_pb2.RunStart.DUPLICATE, 1_000),
    ]
    assert [len(batch.events) for batch in batches] == [0, 2, 1]  # registered, output, result
    out1, out2 = batches[1].events
    assert [(out1.output.chunk, out1.output.offset), (out2.output.chunk, out2.output.offset)] == [
        (b"hello ", 0),
        (b"world\n", 6),
    ]
    (last,) = batches[2].events
    assert (last.job_name, last.execution_id, last.WhichOneof("event")) == ("backup", "exec-1", "finished")
    finished = last.finished
    assert finished.success and finished.HasField("exit_code") and finished.exit_code == 0
    assert (finished.output_tail, finished.output_bytes_total, finished.started_at_ms) == (b"hello world\n", 12, 1_000)
    assert not finished.output_truncated

    # The request crossed the wire intact, maps of messages included.
    (received,) = servicer.requests
    assert received == request
    assert received.runs[0].job.processors["log"].config["forward"] == "true"


def test_agent_unary_calls(agent_server: tuple[TinyAgent, str]) -> None:
    _, address = agent_server
    with grpc.insecure_channel(address) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        assert stub.KillExecution(agent_pb2.KillRequest(execution_id="exec-1"), timeout=RPC_TIMEOUT).found
        assert not stub.KillExecution(agent_pb2.KillRequest(execution_id="nope"), timeout=RPC_TIMEOUT).found
        active = stub.ActiveExecutions(empty_pb2.Empty(), timeout=RPC_TIMEOUT)
    listed = [(e.execution_id, e.job_name, e.run_id) for e in active.executions]
    assert listed == [("exec-1", "backup", "run-1")]


def test_services_and_package() -> None:
    """The services other modules code against exist under their agreed names."""
    agent = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    cluster = cluster_pb2.DESCRIPTOR.services_by_name["ClusterService"]
    assert agent.full_name == "dkron.v1.AgentService"
    assert cluster.full_name == "dkron.v1.ClusterService"
    assert [m.name for m in agent.methods] == ["WatchRuns", "StartRuns", "KillExecution", "ActiveExecutions"]
    assert agent.methods_by_name["WatchRuns"].server_streaming
    assert not agent.methods_by_name["StartRuns"].server_streaming
    assert [m.name for m in cluster.methods] == [
        "Register",
        "Heartbeat",
        "ExecutionDone",
        "Leave",
        "RaftListPeers",
        "RaftRemovePeer",
        "ForwardWrite",
        "FetchState",
    ]
    assert callable(cluster_pb2_grpc.ClusterServiceStub)
    assert callable(cluster_pb2_grpc.add_ClusterServiceServicer_to_server)


def test_a_run_keeps_its_group_and_kind_on_the_wire_and_in_a_delivered_result():
    from dkron.cluster.agent_service import request_from_spec, spec_from_request
    from dkron.cluster.cluster_service import record_from_done
    from dkron.cluster.delivery import done_request
    from dkron.runner import RunSpec

    spec = RunSpec(
        job={"name": "j", "executor": "shell", "executor_config": {"command": "true"}},
        run_id="j@1",
        execution_id="123-a1",
        node_name="a1",
        scheduled_ms=1000,
        attempt=2,
        group=123,
        kind="retry",
    )
    received = spec_from_request(request_from_spec(spec), "a1")
    assert (received.group, received.kind, received.attempt) == (123, "retry", 2)
    record = {
        "id": "123-a1",
        "job_name": "j",
        "run_id": "j@1",
        "attempt": 2,
        "group": 123,
        "kind": "retry",
        "status": "success",
        "success": True,
        "finished_at": "2026-11-30T00:00:01.000Z",
    }
    stored = record_from_done(done_request(record, "a1"))
    assert (stored["group"], stored["kind"], stored["attempt"]) == (123, "retry", 2)


def test_a_result_is_stored_alike_whether_it_came_on_a_stream_or_was_delivered_later():
    """A node sends a finished run on its leader's WatchRuns stream, or with ExecutionDone when
    that stream is gone; the leader must store the same result either way. Here the executor
    wrote nothing (output_bytes 0) and the output is only the error Dkron prefixes."""
    from dkron.cluster.agent_service import finished_message
    from dkron.cluster.cluster_service import result_fields
    from dkron.cluster.delivery import done_request

    record = {
        "id": "9-a1",
        "job_name": "j",
        "run_id": "j@9",
        "status": "failed",
        "success": False,
        "error": "exit status 3",
        "exit_code": 3,
        "output": "exit status 3\n",
        "output_bytes": 0,
        "started_at": "2026-11-30T00:00:00.500Z",
        "finished_at": "2026-11-30T00:00:01.000Z",
    }
    on_stream = result_fields(finished_message(record))
    delivered = result_fields(done_request(record, "a1"))
    assert on_stream == delivered
    assert on_stream["output_bytes"] == 0 and on_stream["exit_code"] == 3
    assert on_stream["output"] == "exit status 3\n"
