"""``ClusterService``: what servers serve to other nodes.

Nodes register and heartbeat here (the leader keeps the membership; a follower answers with the
leader's address so the node retargets). Agents deliver results here when the stream to the
leader that dispatched them broke. Followers forward the writes that need the leader. A server
that fell behind a log compaction fetches a copy of the state database here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import empty_pb2

from dkron import __version__
from dkron.jobs import format_time
from dkron.proto import cluster_pb2, cluster_pb2_grpc
from dkron.store.snapshot import copy_database

if TYPE_CHECKING:
    from dkron.agent import Agent

log = logging.getLogger(__name__)


def _iso(ms: int) -> str | None:
    return format_time(datetime.fromtimestamp(ms / 1000, UTC)) if ms else None


def result_fields(done: Any) -> dict[str, Any]:
    """The final-result fields of an execution record, from an ``ExecutionDoneRequest`` or an
    ``ExecutionFinished`` (a result delivered by the node, or one that came on a stream)."""
    return {
        "status": "success" if done.success else "failed",
        "success": done.success,
        "finished_at": _iso(done.finished_at_ms),
        "error": done.error,
        "exit_code": done.exit_code if done.HasField("exit_code") else None,
        "output": done.output_tail.decode("utf-8", "replace"),
        "output_truncated": done.output_truncated,
        "output_bytes": done.output_bytes_total,
    }


def record_from_done(req: cluster_pb2.ExecutionDoneRequest) -> dict[str, Any]:
    """The execution record an agent reports with ``ExecutionDone``."""
    return {
        "id": req.execution_id,
        "job_name": req.job_name,
        "run_id": req.run_id,
        "node_name": req.node_name,
        "attempt": req.attempt or 1,
        "scheduled_at": _iso(req.scheduled_at_ms),
        "started_at": _iso(req.started_at_ms),
        **result_fields(req),
        "group": req.group,
        "kind": req.kind or "scheduled",
    }


class ClusterServicer(cluster_pb2_grpc.ClusterServiceServicer):
    def __init__(self, agent: Agent, forward_handlers: dict[str, Callable[[dict[str, Any]], Any]]) -> None:
        self.agent = agent
        self.forward_handlers = forward_handlers
        #: State copies are whole-database reads: one at a time.
        self._copy_slots = threading.BoundedSemaphore(1)

    def _not_leader(self, context: grpc.ServicerContext) -> None:
        leader = self.agent.cluster.leader_rpc_addr() or ""
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"not the leader; leader={leader}")

    def Register(self, request: cluster_pb2.RegisterRequest, context: grpc.ServicerContext) -> Any:
        cluster = self.agent.cluster
        if request.is_server and request.raft_addr:
            cluster.learn_server(request.node_name, request.rpc_addr, request.raft_addr)
        persisted = self._persist(request) if self.agent.raft is not None else True
        if self.agent.is_leader:
            node = cluster.membership.heartbeat(
                request.node_name,
                request.rpc_addr,
                dict(request.tags),
                is_server=request.is_server,
                version=request.version,
            )
            # Not committed (e.g. no quorum yet while the cluster forms): its heartbeats are
            # accepted from now on, so it will not register again; the reaper retries the write.
            node.registered = persisted
        return cluster_pb2.RegisterResponse(
            accepted=True,
            leader_addr=cluster.leader_rpc_addr() or "",
            heartbeat_interval_ms=int(cluster.membership.interval_for_size(cluster.base_interval) * 1000),
            message=f"registered with {self.agent.node_name} (dkron {__version__})",
            servers=[
                cluster_pb2.ServerInfo(node_name=n, rpc_addr=s["rpc_addr"], raft_addr=s["raft_addr"])
                for n, s in sorted(cluster.servers.items())
            ],
        )

    def _persist(self, request: cluster_pb2.RegisterRequest) -> bool:
        return self.agent.persist_node(
            request.node_name,
            request.rpc_addr,
            dict(request.tags),
            is_server=request.is_server,
            version=request.version,
        )

    def Heartbeat(self, request: cluster_pb2.HeartbeatRequest, context: grpc.ServicerContext) -> Any:
        cluster = self.agent.cluster
        leader = cluster.leader_rpc_addr() or ""
        if not self.agent.is_leader:
            return cluster_pb2.HeartbeatResponse(leader_addr=leader, ok=False)
        node = cluster.membership.get(request.node_name)
        if node is None:  # a new leader that has not heard from this node: ask it to register
            return cluster_pb2.HeartbeatResponse(leader_addr=leader, ok=False)
        cluster.membership.heartbeat(
            node.name, node.rpc_addr, None, is_server=node.is_server, running=request.running_execution_ids
        )
        # Recomputed only now and then: it depends on the cluster size, which changes slowly.
        interval = cluster.membership.interval_for_size(cluster.base_interval)
        settled = self.agent.reader.settled_results(
            [(ref.job_name, ref.execution_id) for ref in request.unconfirmed_results]
        )
        return cluster_pb2.HeartbeatResponse(
            leader_addr=leader,
            ok=True,
            heartbeat_interval_ms=int(interval * 1000),
            committed_results=[cluster_pb2.ExecutionRef(job_name=j, execution_id=e) for j, e in settled],
        )

    def ExecutionDone(self, request: cluster_pb2.ExecutionDoneRequest, context: grpc.ServicerContext) -> Any:
        if not self.agent.is_leader:
            self._not_leader(context)
        self.agent.recorder.add(record_from_done(request))
        return cluster_pb2.Ack(node_name=self.agent.node_name, message="recorded")

    def Leave(self, request: cluster_pb2.LeaveRequest, context: grpc.ServicerContext) -> Any:
        if request.node_name in ("", self.agent.node_name):
            return stop_soon(self.agent)  # `dkron leave`: this node leaves and stops
        left = self.agent.cluster.membership.leave(request.node_name)
        # A server that is stopping too, or already cut off from its quorum (the whole cluster going
        # down at once; the agent's Leave can arrive before this server's own SIGTERM), may be
        # unable to commit: waiting 5 s would hold the leaving node and this server's own exit.
        # Membership is soft state; the next leader sees the node as gone anyway.
        raft = self.agent.raft
        quorum = raft is not None and raft.quorum_connected()
        timeout = 5.0 if quorum and not self.agent.stopping else 0.5
        try:
            now = format_time(datetime.now(UTC))
            self.agent.write("node_left", {"name": request.node_name, "now": now}, timeout=timeout)
        except Exception as exc:
            log.warning("could not record that %s left: %s", request.node_name, exc)
        return cluster_pb2.Ack(node_name=self.agent.node_name, message="left" if left else "unknown node")

    def RaftListPeers(self, request: empty_pb2.Empty, context: grpc.ServicerContext) -> Any:
        return cluster_pb2.RaftPeers(peers=[cluster_pb2.RaftPeer(**peer) for peer in self.agent.cluster.raft_peers()])

    def RaftRemovePeer(self, request: cluster_pb2.RemovePeerRequest, context: grpc.ServicerContext) -> Any:
        if not self.agent.is_leader:
            self._not_leader(context)
        target = request.address or request.node_name
        try:
            message = self.agent.cluster.remove_server(target)
        except ValueError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return cluster_pb2.Ack(node_name=self.agent.node_name, message=message)

    def FetchState(self, request: cluster_pb2.FetchStateRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        state = self.agent.state
        if state.applied_index() < request.min_applied_index:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{self.agent.node_name} has applied {state.applied_index()} < {request.min_applied_index} entries",
            )
        with self._copy_slots, tempfile.TemporaryDirectory(dir=self.agent.data_dir, prefix="state-copy-") as tmp:
            path = os.path.join(tmp, "state.db")
            applied = copy_database(state.path, path)
            total = os.path.getsize(path)
            with open(path, "rb") as f:
                while chunk := f.read(STATE_CHUNK):
                    yield cluster_pb2.StateChunk(data=chunk, applied_index=applied, total_bytes=total)

    def ForwardWrite(self, request: cluster_pb2.ForwardWriteRequest, context: grpc.ServicerContext) -> Any:
        if not self.agent.is_leader:
            self._not_leader(context)
        handler = self.forward_handlers.get(request.command)
        if handler is None:
            return cluster_pb2.ForwardWriteResponse(
                ok=False, error=f"unknown command {request.command}", http_status=400
            )
        try:
            result = handler(json.loads(request.payload_json or b"{}"))
        except Exception as exc:  # the handler's error is the caller's answer, with its status
            status = getattr(exc, "status", 500)
            return cluster_pb2.ForwardWriteResponse(ok=False, error=str(exc), http_status=status)
        return cluster_pb2.ForwardWriteResponse(ok=True, result_json=json.dumps(result).encode())


STATE_CHUNK = 1024 * 1024


def stop_soon(agent: Agent) -> cluster_pb2.Ack:
    """Answer first, then stop gracefully (running executions may finish)."""
    threading.Timer(0.2, agent.stop).start()
    return cluster_pb2.Ack(node_name=agent.node_name, message=f"{agent.node_name} is leaving")


class LeaveServicer(cluster_pb2_grpc.ClusterServiceServicer):
    """What a client agent (not a server) serves of ClusterService: ``dkron leave``."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def Leave(self, request: cluster_pb2.LeaveRequest, context: grpc.ServicerContext) -> Any:
        return stop_soon(self.agent)
