"""One node: wires plugins, the runner, gRPC, and (on servers) the store, scheduler and HTTP API.

Every node runs jobs (the runner) and serves ``AgentService`` over gRPC so a leader can
dispatch to it; it registers with the servers and heartbeats to the leader. A server (``--server``)
is also a Raft member holding the replicated state; the one that leads schedules.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2

from dkron import __version__
from dkron.cluster.agent_service import AgentServicer
from dkron.cluster.cluster_service import ClusterServicer, LeaveServicer
from dkron.cluster.dispatch import ClusterPlacement
from dkron.cluster.membership import Node
from dkron.cluster.node import Cluster
from dkron.cluster.reaper import Reaper
from dkron.cluster.security import identity_from_config
from dkron.jobs import format_time
from dkron.ledger import RunLedger
from dkron.metrics import Metrics
from dkron.notify.notifier import Notifier, NotifyConfig
from dkron.plugins import PluginHost, load_plugins
from dkron.proto import agent_pb2_grpc, cluster_pb2_grpc
from dkron.recorder import Recorder
from dkron.runner import Runner
from dkron.scheduler import Scheduler
from dkron.store.queries import Reader
from dkron.store.raft import RaftConfig, RaftNode
from dkron.store.state import StateMachine

log = logging.getLogger(__name__)

JOB_COMMANDS = ("put_job", "delete_job", "set_disabled")
HEARTBEAT_INTERVAL = 1.0
FAILURE_TIMEOUT = 5.0


class Agent:
    def __init__(self, config: dict[str, Any], plugins: PluginHost | None = None) -> None:
        self.config = config
        self.node_name: str = config["node-name"]
        self.is_server: bool = bool(config["server"])
        self.started_at = time.time()
        self.plugins = plugins or load_plugins(config)
        self.data_dir = os.path.abspath(config["data-dir"])
        host = config["advertise-addr"] or config["bind-addr"]
        self.rpc_addr = f"{host}:{config['rpc-port']}"
        self.raft_addr = f"{host}:{config['raft-port']}" if self.is_server else None
        self.raft: RaftNode | None = None
        self.http_server: Any = None
        self.grpc_server: grpc.Server | None = None
        self.reaper: Reaper | None = None
        self._stopped = threading.Event()
        self._done = threading.Event()
        self._paused_submissions = False
        #: Mutual-TLS identity for gRPC: CA-issued (--grpc-tls-*) or derived from the cluster key
        #: (--encrypt); None: plaintext, loopback only.
        self.identity = identity_from_config(config)

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the journal is pickles: whoever can write it can run code
        self.cluster = Cluster(
            node_name=self.node_name,
            rpc_addr=self.rpc_addr,
            raft_addr=self.raft_addr,
            tags=self.config["tag"],
            join=self.config["join"] + self.config["retry-join"],
            data_dir=self.data_dir,
            running_ids=lambda: [e["id"] for e in self.runner.active()],
            heartbeat_interval=HEARTBEAT_INTERVAL,
            identity=self.identity,
            failure_timeout=FAILURE_TIMEOUT,
        )
        if self.is_server:
            self._start_store()
        self.runner = Runner(
            self.node_name,
            self.plugins.executors,
            self.plugins.processors,
            self.recorder.add if self.is_server else self.cluster.deliver,
            max_concurrent=self.config["max-concurrent-runs"],
            max_output_bytes=self.config["max-output-bytes"],
            ledger=RunLedger(os.path.join(self.data_dir, "started-runs.log")),
        )
        self._start_grpc()
        if self.is_server:
            self._start_server()
        self.cluster.start()
        log.info(
            "dkron %s node %s (%s) gRPC %s%s",
            __version__,
            self.node_name,
            "server" if self.is_server else "agent",
            self.rpc_addr,
            f", raft {self.raft_addr}, HTTP {self.config['http-addr']}" if self.is_server else "",
        )

    def _start_store(self) -> None:
        db_path = os.path.join(self.data_dir, "state.db")
        self.state = StateMachine(db_path)
        self.reader = Reader(db_path)
        self.recorder = Recorder(
            self.write,
            keep_per_job=self.config["retention-count"],
            keep_seconds=self.config["retention-age-seconds"],
            # Tests widen the window between receiving a result and committing it.
            flush_interval=float(os.environ.get("DKRON_RECORD_FLUSH_INTERVAL", "0.02")),
        )

    def _start_grpc(self) -> None:
        # Runs no longer hold a thread here (one WatchRuns stream per leader carries them all):
        # the threads serve that stream, StartRuns batches, heartbeats, kills, forwarded writes.
        workers = 64
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(
                self.runner,
                self.node_name,
                self.cluster.deliver,
                active=self._active_here if self.is_server else None,
                on_reported=self.cluster.reported,
            ),
            server,
        )
        servicer = ClusterServicer(self, {"run_job": self._forwarded_run}) if self.is_server else LeaveServicer(self)
        cluster_pb2_grpc.add_ClusterServiceServicer_to_server(servicer, server)
        if self.identity is not None:
            bound = server.add_secure_port(self.rpc_addr, self.identity.server_credentials())
        else:
            bound = server.add_insecure_port(self.rpc_addr)
        if bound == 0:
            raise RuntimeError(f"cannot bind gRPC to {self.rpc_addr}: address in use or not local")
        server.start()
        self.grpc_server = server

    def _start_server(self) -> None:
        self.placement = ClusterPlacement(
            node_name=self.node_name,
            runner=self.runner,
            membership=self.cluster.membership,
            channels=self.cluster.channels,
            record=self.recorder.add,
            running_in_store=lambda: {e["job_name"] for e in self.reader.running_executions()},
            max_output_bytes=self.config["max-output-bytes"],
        )
        self.scheduler = Scheduler(
            self.reader,
            self.write,
            self.runner,
            self.recorder.add,
            node_name=self.node_name,
            catchup_window=self.config["catchup-window"],
            placement=self.placement,
            retry_backoff=(self.config["retry-backoff-base"], self.config["retry-backoff-max"]),
            commit_records=self.recorder.commit_now,
        )
        self.scheduler.on_leadership = self._prepare_leadership
        self.state.listeners.append(self._on_applied)
        # Notifications are sent by the leader, from apply listeners, off every scheduling path.
        self.notifier = Notifier(
            NotifyConfig.from_config(self.config),
            self.state.path,
            self.write,
            node_name=self.node_name,
            is_leader=lambda: self.is_leader,
        )
        self.state.listeners.append(self.notifier.on_applied)
        self.metrics = Metrics(self, is_leader=lambda: self.is_leader)
        self.state.listeners.append(self.metrics.on_applied)
        self.metrics.start()
        self.notifier.start()
        # Before Raft starts: a paused cluster must not run catch-ups when it comes back.
        self.scheduler.paused = bool(self.reader.meta("scheduling_paused", False))
        self.scheduler.start()
        self.recorder.start()
        expect = self.config["bootstrap-expect"]
        partners = (
            self.cluster.bootstrap_partners(expect, timeout=None if self.config["retry-join"] else 120.0)
            if expect > 1
            else self.cluster.bootstrap_partners(1, timeout=0)
        )
        raft_config = RaftConfig(
            data_dir=self.data_dir,
            self_addr=self.raft_addr or "",
            partners=tuple(partners),
            password=self.config["encrypt"] or None,
        )
        # Tests and chaos runs force frequent log compaction to exercise crash-during-snapshot.
        if os.environ.get("DKRON_RAFT_COMPACTION_ENTRIES"):
            raft_config.compaction_min_entries = int(os.environ["DKRON_RAFT_COMPACTION_ENTRIES"])
        self.raft = RaftNode(
            raft_config, self.state, on_state_change=self._leadership_changed, fetch_state=self.cluster.fetch_state
        )
        self.cluster.raft = self.raft
        self.scheduler.can_dispatch = self.raft.has_lease
        # This node is a target from the start, before it leads or hears its own heartbeat.
        self.cluster.membership.heartbeat(
            self.node_name, self.rpc_addr, self.config["tag"], is_server=True, version=__version__
        )
        self.reaper = Reaper(
            node_name=self.node_name,
            membership=self.cluster.membership,
            reader=self.reader,
            runner=self.runner,
            record=self.recorder.add,
            is_leader=lambda: self.is_leader and self.raft is not None and self.raft.has_lease(),
            grace=FAILURE_TIMEOUT,
            register=self._persist_member,
            retry=self.scheduler.retry_unstarted,
        )
        self.reaper.start()
        self._start_http()

    def _leadership_changed(self, leading: bool) -> None:
        """On the Raft tick thread: hand the news over, never block."""
        self.scheduler.set_leader(leading)
        if not leading:
            # Runs in flight report to the next leader at once (ExecutionDone), not to this
            # server, which could no longer commit their results.
            self.placement.close_streams()

    def _prepare_leadership(self) -> None:
        """Runs in the scheduler's thread when this server starts leading, before planning."""
        # Barrier: commit a no-op in this term and wait for it. Entries the previous leader
        # committed are applied here only then; planning on an older view would take ticks it
        # already launched for missed ones and launch them again.
        # The barrier is also the fence: this term becomes the epoch below which the state
        # machine refuses launches, so a deposed leader's late proposals cannot commit.
        assert self.raft is not None
        epoch = self.raft.raftCurrentTerm
        self.write("set_epoch", {"epoch": epoch}, timeout=10)
        self.scheduler.epoch = epoch
        self.cluster.membership.reset(self.reader.nodes(), keep=self.node_name)
        me = self.cluster.membership.heartbeat(
            self.node_name, self.rpc_addr, self.config["tag"], is_server=True, version=__version__
        )
        # A leader heartbeats to itself, so it never registers like the others: record it here.
        me.registered = self._persist_member(me)

    def persist_node(self, name: str, rpc_addr: str, tags: dict[str, str], *, is_server: bool, version: str) -> bool:
        """Replicate a node's registration (so a new leader knows every node at once). Only a
        new or changed registration costs a Raft write; re-registering after a failover does not.
        Returns whether the registration is committed."""
        wanted = {"name": name, "rpc_addr": rpc_addr, "tags": tags, "is_server": is_server, "version": version}
        stored = next((n for n in self.reader.nodes() if n["name"] == name), None)
        if stored is not None and stored["status"] == "alive" and all(stored[k] == v for k, v in wanted.items()):
            return True
        try:
            self.write("upsert_node", {**wanted, "now": format_time(datetime.now(UTC))}, timeout=5)
        except Exception as exc:  # no quorum yet: the leader's reaper writes it again
            log.warning("could not record the registration of %s: %s", name, exc)
            return False
        return True

    def _persist_member(self, node: Node) -> bool:
        return self.persist_node(node.name, node.rpc_addr, node.tags, is_server=node.is_server, version=node.version)

    def _start_http(self) -> None:
        from dkron.api.app import create_app
        from dkron.api.auth import warn_if_unprotected
        from dkron.api.server import create_http_server

        warn_if_unprotected(self)
        self.http_server = create_http_server(create_app(self), self.config)
        threading.Thread(target=self.http_server.run, name="http", daemon=True).start()

    def _on_applied(self, command: str, payload: dict[str, Any], result: Any) -> None:
        # Runs on the Raft tick thread after each apply: only hand over, never block.
        if command in JOB_COMMANDS:
            name = payload["job"]["name"] if command == "put_job" else payload["name"]
            self.scheduler.job_changed(name)
        elif command == "restore_jobs":
            for item in payload["jobs"]:
                self.scheduler.job_changed(item["job"]["name"])
        elif command == "record" and isinstance(result, dict) and (result.get("followups") or result.get("deleted")):
            for name in result.get("deleted") or ():
                self.scheduler.job_changed(name)  # ephemeral job deleted after its successful run
            self.scheduler.followups_changed()
        elif command == "set_meta" and payload.get("key") == "scheduling_paused":
            self.scheduler.paused = bool(payload["value"])
            self.scheduler.followups_changed()
        elif command == "snapshot_installed":  # a peer's state copy replaced our rows
            self.scheduler.paused = bool(self.reader.meta("scheduling_paused", False))
        elif command == "remove_server":
            self.cluster.forget_server(payload["name"])

    # -- operations used by the API ----------------------------------------------------------
    def write(self, command: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        if self.raft is None:
            from dkron.store.raft import StoreUnavailable

            raise StoreUnavailable("this server has not joined its cluster yet")
        return self.raft.write(command, payload, timeout=timeout)

    @property
    def stopping(self) -> bool:
        """A graceful stop has begun (SIGTERM, ``dkron leave``)."""
        return self._stopped.is_set()

    @property
    def is_leader(self) -> bool:
        return bool(self.raft and self.raft.is_leader)

    def run_now(self, job: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
        """A manual run: started by the leader, forwarded there from a follower."""
        if self.is_leader:
            return self.scheduler.run_now(job, force=force)
        return self.cluster.forward("run_job", {"name": job["name"], "force": force})

    def _forwarded_run(self, payload: dict[str, Any]) -> dict[str, Any]:
        job = self.reader.get_job(payload["name"])
        if job is None:
            raise LookupError(f"job not found: {payload['name']}")
        return self.scheduler.run_now(job, force=bool(payload.get("force")))

    def _active_here(self) -> list[dict[str, Any]]:
        # Never forwards (a follower asked by another follower must not ask back).
        return self.placement.active() if self.is_leader else self.runner.active()

    def busy(self) -> list[dict[str, Any]]:
        """Running executions with their output so far (a follower asks the leader)."""
        if self.is_leader:
            return self.placement.active()
        rows = self.reader.running_executions()
        leader = self.cluster.leader_rpc_addr()
        if leader:
            try:
                live = self.cluster.channels.agent(leader).ActiveExecutions(empty_pb2.Empty(), timeout=2)
            except grpc.RpcError:
                return rows  # the stored view, without live output
            known = {(e["job_name"], e["id"]) for e in rows}
            outputs = {(e.job_name, e.execution_id): e.output_tail.decode("utf-8", "replace") for e in live.executions}
            rows = [{**e, "output": outputs.get((e["job_name"], e["id"]), e["output"])} for e in rows]
            rows += [
                {
                    "id": e.execution_id,
                    "job_name": e.job_name,
                    "run_id": e.run_id,
                    "node_name": e.node_name,
                    "status": "running",
                    "started_at": None,
                    "finished_at": None,
                    "output": e.output_tail.decode("utf-8", "replace"),
                }
                for e in live.executions
                if (e.job_name, e.execution_id) not in known
            ]
        return rows

    def kill(self, job: str, execution_id: str, reason: str) -> bool:
        return self.placement.kill(job, execution_id, reason)

    def members(self) -> list[dict[str, Any]]:
        leader_rpc = self.cluster.leader_rpc_addr()
        leader_name = next((n for n, s in self.cluster.servers.items() if s["rpc_addr"] == leader_rpc), None)
        if self.is_leader:
            nodes = self.cluster.membership.nodes()
        else:
            self.cluster.membership.reset(self.reader.nodes(), keep=self.node_name)  # the registered view
            nodes = self.cluster.membership.nodes()
        if not any(node.name == self.node_name for node in nodes):
            nodes.insert(
                0,
                self.cluster.membership.heartbeat(
                    self.node_name, self.rpc_addr, self.config["tag"], is_server=True, version=__version__
                ),
            )
        return [node.as_member(leader_name) for node in nodes]

    @property
    def submissions_paused(self) -> bool:
        return self._paused_submissions

    def set_submissions_paused(self, paused: bool) -> None:
        self._paused_submissions = paused

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Graceful stop: no new runs, let running ones finish (bounded), record, leave."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping: waiting up to %.0fs for running executions", self.config["shutdown-timeout"])
        if self.is_server:
            self.scheduler.retire()  # a re-election while stopping must not resume scheduling
            self.notifier.flush()  # so the next leader does not send them again
            self._hand_over_leadership()
        self.runner.shutdown(self.config["shutdown-timeout"])
        if self.is_server:
            # Without a leader nothing can commit: do not wait 10 s for it (remote runs' results
            # are still held by their agents and sent to the next leader).
            raft = self.raft
            quorum = raft is not None and raft.leader_addr() is not None
            # The whole cluster may be stopping at once: give up as soon as the leader is gone.
            self.recorder.stop(timeout=10 if quorum else 2, abandon=lambda: raft is None or raft.leader_addr() is None)
            self.notifier.stop()
            self.metrics.stop()
            self.scheduler.stop()
            self.placement.shutdown()
            if self.reaper is not None:
                self.reaper.stop()
            if self.http_server is not None:
                self.http_server.close()
        self.cluster.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2).wait(3)
        if self.raft is not None:
            self.raft.destroy_synchronous()  # flushes the journal before the process exits
        self.runner.ledger.close()
        log.info("stopped")
        self._done.set()

    def _hand_over_leadership(self) -> None:
        """A leader that stops first hands leadership over, so scheduling moves at once instead
        of after an election timeout. Bounded: a lone server has no one to hand over to."""
        if self.raft is None or not self.is_leader or not self.raft.otherNodes:
            return
        if not self.raft.connected_partners():
            return  # no other server is connected (the whole cluster is stopping): nobody to take over
        self.raft.transferLeadership()
        deadline = time.monotonic() + 2.0
        while self.is_leader and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait(self) -> None:
        """Block until :meth:`stop` has finished (records committed, Raft flushed).

        Waits in short slices: Python runs signal handlers only in the main thread, and only when
        it wakes; SIGTERM delivered to another thread (gRPC's, Raft's) would otherwise never be
        handled while the main thread sleeps in an untimed wait.
        """
        while not self._done.wait(0.2):
            pass
