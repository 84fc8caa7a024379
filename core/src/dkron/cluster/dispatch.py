"""The leader's placement in a cluster: pick nodes by tags, stream runs from them over gRPC.

A run on the leader itself goes straight to the local runner. A run on another node is an
``AgentRun`` server-stream: its ``started`` and ``finished`` events become execution records
(through the recorder, so they are committed in batches), and its ``output`` events feed a live
tail that ``/v1/busy`` shows while the run goes on.

If the stream breaks while the run goes on (this leader is failing over, or the network
hiccups), the agent delivers the result itself with ``ExecutionDone``; if the agent dies, the
leader's heartbeat check records the execution as lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import grpc

from dkron.cluster.agent_service import request_from_spec
from dkron.cluster.channels import Channels
from dkron.cluster.cluster_service import _iso
from dkron.cluster.membership import Membership
from dkron.jobs import format_time
from dkron.logcontext import about
from dkron.redact import output_masks
from dkron.runner import Runner, RunSpec, TailBuffer

log = logging.getLogger(__name__)


class ClusterPlacement:
    def __init__(
        self,
        *,
        node_name: str,
        runner: Runner,
        membership: Membership,
        channels: Channels,
        record: Callable[[dict[str, Any]], None],
        running_in_store: Callable[[], set[str]],
        max_streams: int = 256,
        max_output_bytes: int = 256_000,
    ) -> None:
        self.node_name = node_name
        self.runner = runner
        self.membership = membership
        self.channels = channels
        self.record = record
        self.running_in_store = running_in_store
        self.max_output_bytes = max_output_bytes
        self._pool = ThreadPoolExecutor(max_workers=max_streams, thread_name_prefix="dispatch")
        self._lock = threading.Lock()
        self._remote: dict[tuple[str, str], dict[str, Any]] = {}

    # -- the Placement interface used by the scheduler ---------------------------------------
    def targets(self, job: dict[str, Any], avoid: Iterable[str] = ()) -> list[str]:
        return [node.name for node in self.membership.select(job.get("tags") or {}, avoid)]

    def submit(self, spec: RunSpec) -> str:
        if spec.node_name == self.node_name:
            return self.runner.submit(spec)
        node = self.membership.get(spec.node_name)
        if node is None or node.status != "alive":
            return "unreachable"
        key = (spec.job["name"], spec.execution_id)
        with self._lock:
            self._remote[key] = {
                "spec": spec,
                "node": node.name,
                # Masked here too: a secret split across two streamed chunks is whole again here.
                "output": TailBuffer(self.max_output_bytes, output_masks(spec.job, self.runner.executors)),
                "started_at": None,
            }
        self._pool.submit(self._stream, spec, node.rpc_addr, key)
        return "started"

    def running_jobs(self) -> set[str]:
        with self._lock:
            remote = {job for job, _ in self._remote}
        return self.runner.running_jobs() | remote | self.running_in_store()

    # -- streaming ---------------------------------------------------------------------------
    def _base(self, spec: RunSpec, node: str) -> dict[str, Any]:
        return {
            "id": spec.execution_id,
            "job_name": spec.job["name"],
            "run_id": spec.run_id,
            "group": spec.group,
            "attempt": spec.attempt,
            "node_name": node,
            "kind": spec.kind,
            "scheduled_at": format_time(datetime.fromtimestamp(spec.scheduled_ms / 1000, UTC))
            if spec.scheduled_ms
            else None,
        }

    def _stream(self, spec: RunSpec, rpc_addr: str, key: tuple[str, str]) -> None:
        base = self._base(spec, spec.node_name)
        live = self._remote.get(key)
        try:
            for event in self.channels.agent(rpc_addr).AgentRun(request_from_spec(spec)):
                kind = event.WhichOneof("event")
                if kind == "started":
                    started = _iso(event.started.started_at_ms)
                    if live is not None:
                        live["started_at"] = started
                    self.record({**base, "status": "running", "started_at": started, "finished_at": None})
                elif kind == "output" and live is not None:
                    live["output"].write(event.output.chunk)
                elif kind == "finished":
                    done = event.finished
                    self.record(
                        {
                            **base,
                            "status": "success" if done.success else "failed",
                            "success": done.success,
                            "started_at": live["started_at"] if live else None,
                            "finished_at": _iso(done.finished_at_ms),
                            "error": done.error,
                            "exit_code": done.exit_code if done.HasField("exit_code") else None,
                            "output": done.output_tail.decode("utf-8", "replace"),
                            "output_truncated": done.output_truncated,
                            "output_bytes": done.output_bytes_total,
                        }
                    )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.ALREADY_EXISTS:
                log.info(
                    "node %s refused run %s: it already started it",
                    spec.node_name,
                    spec.run_id,
                    extra=about(spec.job["name"], spec.run_id),
                )
            elif live is not None and live["started_at"] is None:
                # Never started: say so now instead of waiting for a heartbeat timeout.
                now = format_time(datetime.now(UTC))
                reason = f"could not start on node {spec.node_name}: {code.name if code else exc}"
                self.record(
                    {
                        **base,
                        "status": "failed",
                        "success": False,
                        "started_at": now,
                        "finished_at": now,
                        "error": reason,
                        "output": reason,
                    }
                )
            else:
                log.warning(
                    "stream of %s from %s broke (%s); the agent reports the result itself",
                    spec.execution_id,
                    spec.node_name,
                    code,
                    extra=about(spec.job["name"], spec.run_id),
                )
        finally:
            with self._lock:
                self._remote.pop(key, None)

    # -- inspection and control --------------------------------------------------------------
    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._remote.values())
        out = []
        for item in items:
            base = self._base(item["spec"], item["node"])
            out.append(
                {
                    **base,
                    "status": "running",
                    "started_at": item["started_at"],
                    "finished_at": None,
                    "output": item["output"].text(),
                }
            )
        return self.runner.active() + out

    def kill(self, job: str, execution_id: str, reason: str) -> bool:
        if self.runner.kill(job, execution_id, reason):
            return True
        with self._lock:
            item = self._remote.get((job, execution_id))
        node = self.membership.get(item["node"]) if item else None
        if node is None:
            # Not dispatched by this leader (e.g. before a failover): ask every alive node.
            candidates = [n for n in self.membership.nodes() if n.status == "alive" and n.name != self.node_name]
        else:
            candidates = [node]
        from dkron.proto import agent_pb2

        for candidate in candidates:
            try:
                response = self.channels.agent(candidate.rpc_addr).KillExecution(
                    agent_pb2.KillRequest(execution_id=execution_id, job_name=job, reason=reason), timeout=3
                )
            except grpc.RpcError:
                continue
            if response.found:
                return True
        return False

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
