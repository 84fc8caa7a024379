"""``AgentService``: what every node serves so the leader can run jobs on it.

A leader opens one ``WatchRuns`` stream per node and starts runs there in batches with
``StartRuns``; each run's output and final result travel on that stream, batched with the
other runs' (``watch.py``). When the stream is gone (the leader died or was partitioned), the
executions keep running; their final records are handed to ``on_orphaned_result``, which
delivers them to whichever server leads next (``ExecutionDone``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from dkron.cluster.delivery import _ms, result_message_fields
from dkron.cluster.watch import Watchers
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
        # By this node's clock: the leader said how long from now, not at what time.
        start_at=time.time() + request.start_in_ms / 1000 if request.start_in_ms > 0 else 0.0,
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
        start_in_ms=max(0, round((spec.start_at - time.time()) * 1000)) if spec.start_at else 0,
    )


def finished_message(record: dict[str, Any]) -> agent_pb2.ExecutionFinished:
    return agent_pb2.ExecutionFinished(**result_message_fields(record))


_OUTCOMES = {
    "started": agent_pb2.RunStart.STARTED,
    "duplicate": agent_pb2.RunStart.DUPLICATE,
    "stopping": agent_pb2.RunStart.STOPPING,
}


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
        self.watchers = Watchers(runner, on_orphaned_result)

    def WatchRuns(self, request: agent_pb2.WatchRunsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        watcher = self.watchers.open(request.watch_id)
        try:
            yield agent_pb2.RunEvents()  # registered: runs started from now on report here
            while context.is_active():
                events = watcher.next_events(OUTPUT_POLL)
                if events:
                    yield agent_pb2.RunEvents(events=events)
        finally:
            # Results queued but not sent must not be lost: they go through ExecutionDone.
            self.watchers.close(watcher)

    def StartRuns(self, request: agent_pb2.StartRunsRequest, context: grpc.ServicerContext) -> Any:
        specs = [spec_from_request(run, self.node_name) for run in request.runs]
        keys = [(spec.job["name"], spec.execution_id) for spec in specs]
        # Owned before they start: output and results must find the stream even if a run ends
        # before this call returns.
        owned = [self.watchers.own(request.watch_id, key) for key in keys]
        starts: list[dict[str, Any]] = [{} for _ in specs]
        outcomes = self.runner.submit_many(
            [(spec, self._reporter(request.watch_id, start)) for spec, start in zip(specs, starts, strict=True)]
        )
        answer = []
        for spec, key, new, outcome, start in zip(specs, keys, owned, outcomes, starts, strict=True):
            if outcome != "started" and new:
                self.watchers.disown(request.watch_id, key)
            answer.append(
                agent_pb2.RunStart(
                    execution_id=spec.execution_id,
                    outcome=_OUTCOMES[outcome],
                    started_at_ms=_ms(start.get("started_at")) if outcome == "started" else 0,
                )
            )
        return agent_pb2.StartRunsResponse(starts=answer)

    def _reporter(self, watch_id: str, started: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
        def report(record: dict[str, Any]) -> None:
            if record["status"] == "running":
                started.update(record)  # synchronous, inside Runner.submit: the answer carries it
                return
            event = agent_pb2.RunEvent(
                execution_id=record["id"], job_name=record["job_name"], finished=finished_message(record)
            )
            self.on_reported(record)  # held until a heartbeat answer confirms it committed
            if not self.watchers.send_final(watch_id, record, event):
                self.on_orphaned_result(record)  # nobody is listening: deliver it another way

        return report

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
