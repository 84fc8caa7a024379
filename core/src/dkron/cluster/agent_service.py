"""``AgentService``: what every node serves so the leader can run jobs on it.

``AgentRun`` starts the execution through the local runner and streams it back: a ``started``
event, ``output`` chunks as they are produced, and ``finished``. If the stream breaks (the
leader died or was partitioned), the execution keeps running; its final record is handed to
``on_orphaned_result``, which delivers it to whichever server leads next (``ExecutionDone``).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from dkron.cluster.delivery import _ms
from dkron.proto import agent_pb2, agent_pb2_grpc
from dkron.runner import Runner, RunSpec

log = logging.getLogger(__name__)

OUTPUT_POLL = 0.2  # seconds between output chunks on the stream


def spec_from_request(request: agent_pb2.AgentRunRequest, node_name: str) -> RunSpec:
    job = request.job
    return RunSpec(
        job={
            "name": job.name,
            "executor": job.executor,
            "executor_config": dict(job.executor_config),
            "processors": {name: dict(cfg.config) for name, cfg in job.processors.items()},
            "metadata": dict(job.metadata),
        },
        run_id=request.run_id,
        execution_id=request.execution_id,
        node_name=node_name,
        scheduled_ms=request.scheduled_at_ms,
        attempt=request.attempt or 1,
        group=request.group,
        kind=request.kind or "scheduled",
    )


def request_from_spec(spec: RunSpec) -> agent_pb2.AgentRunRequest:
    job = spec.job
    return agent_pb2.AgentRunRequest(
        job=agent_pb2.JobSpec(
            name=job["name"],
            executor=job["executor"],
            executor_config=job.get("executor_config") or {},
            processors={n: agent_pb2.ProcessorConfig(config=c) for n, c in (job.get("processors") or {}).items()},
            metadata=job.get("metadata") or {},
        ),
        run_id=spec.run_id,
        execution_id=spec.execution_id,
        attempt=spec.attempt,
        scheduled_at_ms=spec.scheduled_ms,
        group=spec.group,
        kind=spec.kind,
    )


def finished_event(record: dict[str, Any]) -> agent_pb2.AgentRunEvent:
    output = (record.get("output") or "").encode("utf-8", "replace")
    finished = agent_pb2.ExecutionFinished(
        success=bool(record.get("success")),
        error=record.get("error") or "",
        finished_at_ms=_ms(record.get("finished_at")),
        output_tail=output,
        output_truncated=bool(record.get("output_truncated")),
        output_bytes_total=int(record.get("output_bytes") or len(output)),
    )
    if record.get("exit_code") is not None:
        finished.exit_code = int(record["exit_code"])
    return agent_pb2.AgentRunEvent(finished=finished)


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        runner: Runner,
        node_name: str,
        on_orphaned_result: Callable[[dict[str, Any]], None],
        active: Callable[[], list[dict[str, Any]]] | None = None,
        on_reported: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.runner = runner
        #: What ActiveExecutions answers: this node's runs, or on a leader the whole cluster's.
        self.active = active or runner.active
        self.node_name = node_name
        self.on_orphaned_result = on_orphaned_result
        #: Told of every final result sent on a stream (the node holds it until confirmed).
        self.on_reported = on_reported or (lambda record: None)

    def AgentRun(self, request: agent_pb2.AgentRunRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        spec = spec_from_request(request, self.node_name)
        events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        state = {"streaming": True}

        def report(record: dict[str, Any]) -> None:
            if record["status"] != "running" and not state["streaming"]:
                self.on_orphaned_result(record)  # nobody is listening: deliver it another way
            else:
                if record["status"] != "running":
                    self.on_reported(record)
                events.put(record)

        outcome = self.runner.submit(spec, report)
        if outcome != "started":
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS if outcome == "duplicate" else grpc.StatusCode.UNAVAILABLE,
                f"run {spec.run_id} {outcome} on {self.node_name}",
            )
        sent = 0
        try:
            while True:
                try:
                    record = events.get(timeout=OUTPUT_POLL)
                except queue.Empty:
                    record = None
                if record is not None and record["status"] == "running":
                    yield agent_pb2.AgentRunEvent(
                        started=agent_pb2.ExecutionStarted(
                            execution_id=spec.execution_id,
                            node_name=self.node_name,
                            started_at_ms=_ms(record["started_at"]),
                        )
                    )
                    continue
                sent = yield from self._output_since(spec.job["name"], spec.execution_id, sent)
                if record is not None:
                    yield finished_event(record)
                    return
                if not context.is_active():
                    raise grpc.RpcError("stream closed")
        except (grpc.RpcError, GeneratorExit):
            state["streaming"] = False
            # A final record already queued but not sent must not be lost.
            while not events.empty():
                record = events.get_nowait()
                if record["status"] != "running":
                    self.on_orphaned_result(record)
            raise

    def _output_since(self, job: str, execution_id: str, sent: int) -> Iterator[Any]:
        """Yield output written since offset ``sent``; return the new offset."""
        buffer = self.runner.output_of(job, execution_id)
        if buffer is None:
            return sent
        total, tail = buffer.total, buffer.text().encode("utf-8", "replace")
        if total > sent:
            new = tail[-(total - sent) :] if total - sent <= len(tail) else tail
            yield agent_pb2.AgentRunEvent(output=agent_pb2.ExecutionOutput(chunk=new, offset=total - len(new)))
        return total

    def KillExecution(self, request: agent_pb2.KillRequest, context: grpc.ServicerContext) -> Any:
        return agent_pb2.KillResponse(
            found=self.runner.kill(request.job_name, request.execution_id, request.reason or "killed")
        )

    def ActiveExecutions(self, request: empty_pb2.Empty, context: grpc.ServicerContext) -> Any:
        items = [
            agent_pb2.ActiveExecution(
                execution_id=e["id"],
                job_name=e["job_name"],
                run_id=e.get("run_id", ""),
                started_at_ms=_ms(e.get("started_at")),
                node_name=e.get("node_name", ""),
                output_tail=(e.get("output") or "").encode("utf-8", "replace"),
            )
            for e in self.active()
        ]
        return agent_pb2.ActiveExecutionsResponse(executions=items)
