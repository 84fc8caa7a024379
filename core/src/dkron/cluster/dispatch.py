"""The leader's placement in a cluster: pick nodes by tags, start runs on them over gRPC.

A run on the leader itself goes straight to the local runner. Runs on another node are
batched: each node has a queue, drained by one ``StartRuns`` call at a time, so the runs due in
the same instant cost one call per node however many they are. Their output and final results
come back on the leader's ``WatchRuns`` stream from that node (one per node, opened on first use
and closed when idle): ``finished`` events become execution records (through the recorder,
which commits them in batches), ``output`` events feed the live tail that ``/v1/busy`` shows.

If the stream breaks while runs go on (this leader is failing over, or the network hiccups),
the node delivers their results itself with ``ExecutionDone``; if the node dies, the leader's
heartbeat check records the executions as lost.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from dkron.cluster.agent_service import request_from_spec
from dkron.cluster.channels import Channels
from dkron.cluster.cluster_service import _iso, result_fields
from dkron.cluster.membership import Membership
from dkron.jobs import format_time
from dkron.logcontext import about
from dkron.proto import agent_pb2
from dkron.redact import output_masks
from dkron.runner import Runner, RunSpec, TailBuffer

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # runs per StartRuns call
START_TIMEOUT = 10.0  # seconds for one StartRuns call
WATCH_READY_WAIT = 1.0  # how long a first dispatch waits for a node's stream to be registered
WATCH_IDLE_CLOSE = 30.0  # a stream with nothing in flight for this long is closed


@dataclass
class _Link:
    """The leader's side of one remote node: its dispatch queue and its WatchRuns stream."""

    name: str
    rpc_addr: str
    outbox: list[RunSpec] = field(default_factory=list)
    sending: bool = False
    watch_id: str = ""  # of the open stream; "" when none
    call: Any = None  # the WatchRuns call (cancel() closes it)
    used: float = field(default_factory=time.monotonic)


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
        max_senders: int = 32,
        max_output_bytes: int = 256_000,
    ) -> None:
        self.node_name = node_name
        self.runner = runner
        self.membership = membership
        self.channels = channels
        self.record = record
        self.running_in_store = running_in_store
        self.max_output_bytes = max_output_bytes
        self._pool = ThreadPoolExecutor(max_workers=max_senders, thread_name_prefix="dispatch")
        self._lock = threading.Lock()
        self._remote: dict[tuple[str, str], dict[str, Any]] = {}
        self._links: dict[str, _Link] = {}
        #: For /metrics: StartRuns calls made and runs they carried (runs / calls = batch size).
        self.stats = {"calls": 0, "runs": 0}
        self._closed = threading.Event()
        threading.Thread(target=self._close_idle_loop, name="dispatch-idle", daemon=True).start()

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
                "watch": "",
            }
            link = self._links.get(node.name)
            if link is None or link.rpc_addr != node.rpc_addr:
                if link is not None:
                    self._cancel(link)
                link = self._links[node.name] = _Link(node.name, node.rpc_addr)
            link.outbox.append(spec)
            link.used = time.monotonic()
            start_sender = not link.sending
            link.sending = True
        if start_sender:
            self._pool.submit(self._send, link)
        return "started"

    def running_jobs(self) -> set[str]:
        with self._lock:
            remote = {job for job, _ in self._remote}
        return self.runner.running_jobs() | remote | self.running_in_store()

    # -- starting runs -----------------------------------------------------------------------
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

    def _send(self, link: _Link) -> None:
        """Drain ``link``'s queue, one StartRuns call per batch (one sender per link at a time)."""
        while True:
            with self._lock:
                batch = link.outbox[:MAX_BATCH]
                del link.outbox[:MAX_BATCH]
                if not batch:
                    link.sending = False
                    return
            try:
                self._start(link, batch)
            except Exception:
                log.exception("dispatch to %s failed", link.name)
                self._not_started(batch, "dispatch failed (see the leader's log)")

    def _start(self, link: _Link, batch: list[RunSpec]) -> None:
        watch_id = self._watch(link)
        with self._lock:
            for spec in batch:
                live = self._remote.get((spec.job["name"], spec.execution_id))
                if live is not None:
                    live["watch"] = watch_id

        def request() -> agent_pb2.StartRunsRequest:  # built at each call: it says how long runs wait
            return agent_pb2.StartRunsRequest(runs=[request_from_spec(spec) for spec in batch], watch_id=watch_id)

        stub = self.channels.agent(link.rpc_addr)
        with self._lock:
            self.stats["calls"] += 1
            self.stats["runs"] += len(batch)
        try:
            response = stub.StartRuns(request(), timeout=START_TIMEOUT)
            retried = False
        except grpc.RpcError as first:
            # The outcome is unknown: the node may have started some runs. Asking again is
            # safe (it refuses a run id it started: DUPLICATE) and tells which ones did.
            log.info("StartRuns to %s failed (%s); asking again", link.name, _code(first))
            time.sleep(0.2)
            with self._lock:
                self.stats["calls"] += 1
            try:
                response = stub.StartRuns(request(), timeout=START_TIMEOUT)
                retried = True
            except grpc.RpcError as exc:
                self._not_started(batch, f"could not start on node {link.name}: {_code(exc)}")
                return
        refused = [
            spec for spec, start in zip(batch, response.starts, strict=False) if self._started(spec, start, retried)
        ]
        if refused:
            # One line per batch: a new leader re-dispatching a herd gets thousands of these.
            log.info(
                "node %s refused %d run(s) it had already started, e.g. %s",
                link.name,
                len(refused),
                ", ".join(spec.run_id for spec in refused[:3]),
                extra=about(refused[0].job["name"], refused[0].run_id),
            )

    def _started(self, spec: RunSpec, start: agent_pb2.RunStart, retried: bool) -> bool:
        """Take one run's answer; True if the node refused it as one it had already started."""
        key = (spec.job["name"], spec.execution_id)
        if start.outcome == agent_pb2.RunStart.STARTED or (retried and start.outcome == agent_pb2.RunStart.DUPLICATE):
            # A duplicate on the second call is a run the first call started: its result comes.
            with self._lock:
                live = self._remote.get(key)
                if live is None:
                    return  # finished already (its result came first) or its stream broke
                started = _iso(start.started_at_ms)  # None if the node did not say
                live["started_at"] = started
            if started:
                self.record({**self._base(spec, spec.node_name), "status": "running", "started_at": started})
            return False
        with self._lock:
            self._remote.pop(key, None)
        if start.outcome == agent_pb2.RunStart.DUPLICATE:
            return True
        self._not_started([spec], f"could not start on node {spec.node_name}: the node is stopping")
        return False

    def _not_started(self, specs: list[RunSpec], reason: str) -> None:
        """Record runs that surely did not start (say so now, not after a heartbeat timeout)."""
        now = format_time(datetime.now(UTC))
        for spec in specs:
            with self._lock:
                if self._remote.pop((spec.job["name"], spec.execution_id), None) is None:
                    continue  # its result came meanwhile
            self.record(
                {
                    **self._base(spec, spec.node_name),
                    "status": "failed",
                    "success": False,
                    "started_at": now,
                    "finished_at": now,
                    "error": reason,
                    "output": reason,
                }
            )

    # -- the WatchRuns streams ---------------------------------------------------------------
    def _watch(self, link: _Link) -> str:
        """The id of ``link``'s open stream, opening it if needed (only its sender calls this)."""
        with self._lock:
            if link.call is not None:
                return link.watch_id
            watch_id = f"{self.node_name}-{uuid.uuid4().hex[:12]}"
            call = self.channels.agent(link.rpc_addr).WatchRuns(agent_pb2.WatchRunsRequest(watch_id=watch_id))
            link.watch_id, link.call = watch_id, call
        registered = threading.Event()
        threading.Thread(
            target=self._receive, args=(link, call, watch_id, registered), name=f"watch-{link.name}", daemon=True
        ).start()
        # Runs started before the node registered the stream would report with ExecutionDone:
        # correct, only slower. The first batch waits for it a little.
        registered.wait(WATCH_READY_WAIT)
        return watch_id

    def _receive(self, link: _Link, call: Any, watch_id: str, registered: threading.Event) -> None:
        try:
            for batch in call:
                registered.set()
                for event in batch.events:
                    self._on_event(event)
        except grpc.RpcError as exc:
            if _code(exc) != "CANCELLED":
                log.info("runs stream from %s closed: %s", link.name, _code(exc))
        except Exception:
            log.exception("runs stream from %s failed", link.name)
            call.cancel()
        finally:
            registered.set()
            with self._lock:
                if link.watch_id == watch_id:
                    link.watch_id, link.call = "", None
                orphans = [k for k, v in self._remote.items() if v["watch"] == watch_id]
                for key in orphans:
                    del self._remote[key]
            if orphans:
                log.info(
                    "runs stream from %s closed with %d runs in flight; the node reports their results itself",
                    link.name,
                    len(orphans),
                )

    def _on_event(self, event: agent_pb2.RunEvent) -> None:
        key = (event.job_name, event.execution_id)
        kind = event.WhichOneof("event")
        with self._lock:
            live = self._remote.get(key) if kind == "output" else self._remote.pop(key, None)
        if live is None:
            return  # not (or no longer) followed here: the node delivers the result with ExecutionDone
        if kind == "output":
            live["output"].write(event.output.chunk)
            return
        done = event.finished
        # The node's own start time: a run sent ahead starts later than the answer planned.
        started = _iso(done.started_at_ms) or live["started_at"]
        self.record({**self._base(live["spec"], live["node"]), "started_at": started, **result_fields(done)})

    def close_streams(self) -> None:
        """Close every WatchRuns stream (this server stopped leading); non-blocking."""
        with self._lock:
            for link in self._links.values():
                self._cancel(link)

    def open_streams(self) -> int:
        with self._lock:
            return sum(1 for link in self._links.values() if link.call is not None)

    def _cancel(self, link: _Link) -> None:
        """Close ``link``'s stream (with the lock held); its receiver cleans up."""
        if link.call is not None:
            link.call.cancel()

    def _close_idle_loop(self) -> None:
        while not self._closed.wait(5.0):
            now = time.monotonic()
            with self._lock:
                busy = {v["node"] for v in self._remote.values()}
                for name, link in list(self._links.items()):
                    if link.sending:
                        continue
                    node = self.membership.get(name)
                    gone = node is None or node.status != "alive"
                    if gone or (name not in busy and now - link.used > WATCH_IDLE_CLOSE):
                        self._cancel(link)  # its receiver hands any runs in flight to ExecutionDone
                        if name not in busy:
                            del self._links[name]

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
        self._closed.set()
        self.close_streams()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _code(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else str(exc)
