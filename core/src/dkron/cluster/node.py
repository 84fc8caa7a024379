"""A node's part in the cluster: bootstrap, registration, heartbeats, result delivery.

* Servers started with ``--bootstrap-expect N`` register with the addresses in ``--join`` /
  ``--retry-join`` (gRPC), learn each other's Raft addresses, and start Raft once N servers
  are known. The server list is saved in ``<data-dir>/cluster.json`` so a restart rejoins
  without any hand-editing.
* Every node (server or agent) heartbeats to the leader every ``heartbeat_interval``; a
  follower answers with the leader's address and the node retargets.
* A result whose stream to the dispatching leader broke is delivered with ``ExecutionDone`` to
  whichever server leads now, retried until acknowledged. Every result this node reports is
  also held (``results.py``) until a heartbeat answer confirms it committed, and sent again if
  that takes too long: a leader that dies before committing a result it received loses nothing.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from dkron import __version__
from dkron.cluster.channels import Channels
from dkron.cluster.membership import Membership
from dkron.cluster.results import ResultBook
from dkron.cluster.security import Identity
from dkron.proto import cluster_pb2

log = logging.getLogger(__name__)

RPC_TIMEOUT = 3.0


class ForwardError(Exception):
    """A forwarded write failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Cluster:
    def __init__(
        self,
        *,
        node_name: str,
        rpc_addr: str,
        raft_addr: str | None,
        tags: dict[str, str],
        join: list[str],
        data_dir: str,
        running_ids: Callable[[], list[str]],
        heartbeat_interval: float = 1.0,
        failure_timeout: float = 5.0,
        identity: Identity | None = None,
    ) -> None:
        self.node_name = node_name
        self.rpc_addr = rpc_addr
        self.raft_addr = raft_addr
        self.tags = tags
        self.join = [addr for addr in join if addr != rpc_addr]
        self.data_dir = data_dir
        self.running_ids = running_ids
        self.heartbeat_interval = heartbeat_interval
        #: The configured interval; the leader may ask for a longer one in a large cluster.
        self.base_interval = heartbeat_interval
        self.channels = Channels(identity)
        self.membership = Membership(timeout=failure_timeout)
        self.servers: dict[str, dict[str, str]] = self._load_servers()
        if raft_addr:
            self.servers[node_name] = {"rpc_addr": rpc_addr, "raft_addr": raft_addr}
        self.raft: Any = None  # set by the agent once Raft runs (servers)
        self._leader_hint = ""
        self._tls_warned: set[str] = set()
        self._stop = threading.Event()
        self._outbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        #: Results reported but not yet confirmed committed by a leader.
        self.results = ResultBook(resend_after=max(3.0, 3 * heartbeat_interval))
        self._threads: list[threading.Thread] = []

    # -- server list -------------------------------------------------------------------------
    def _servers_path(self) -> str:
        return os.path.join(self.data_dir, "cluster.json")

    def _load_servers(self) -> dict[str, dict[str, str]]:
        try:
            with open(self._servers_path(), encoding="utf-8") as f:
                return json.load(f)["servers"]
        except (OSError, ValueError, KeyError):
            return {}

    def save_servers(self) -> None:
        tmp = self._servers_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"servers": self.servers}, f, indent=2, sort_keys=True)
        os.replace(tmp, self._servers_path())

    def learn_server(self, name: str, rpc_addr: str, raft_addr: str) -> None:
        self.servers[name] = {"rpc_addr": rpc_addr, "raft_addr": raft_addr}

    def raft_to_rpc(self, raft_addr: str) -> str | None:
        for info in self.servers.values():
            if info["raft_addr"] == raft_addr:
                return info["rpc_addr"]
        return None

    def leader_rpc_addr(self) -> str | None:
        if self.raft is None:
            return self._leader_hint or None
        leader = self.raft.leader_addr()
        return self.raft_to_rpc(leader) if leader else None

    # -- registration and bootstrap ----------------------------------------------------------
    def _register_with(self, addr: str) -> cluster_pb2.RegisterResponse | None:
        request = cluster_pb2.RegisterRequest(
            node_name=self.node_name,
            rpc_addr=self.rpc_addr,
            tags=self.tags,
            version=__version__,
            is_server=self.raft_addr is not None,
            raft_addr=self.raft_addr or "",
        )
        try:
            response = self.channels.cluster(addr).Register(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            self._diagnose(addr, exc)
            return None
        for server in response.servers:
            if server.node_name not in self.servers:
                self.learn_server(server.node_name, server.rpc_addr, server.raft_addr)
        if response.leader_addr:
            self._leader_hint = response.leader_addr
        return response

    def _diagnose(self, addr: str, exc: grpc.RpcError) -> None:
        """Log why a server cannot be reached, once per address for a key mismatch."""
        details = (exc.details() or "") if hasattr(exc, "details") else ""
        if ("handshake" in details.lower() or "ssl" in details.lower()) and addr not in self._tls_warned:
            # A wrong key fails silently in pysyncobj; here it is said once, clearly.
            self._tls_warned.add(addr)
            log.error("TLS handshake with %s failed: do both nodes use the same --encrypt key? (%s)", addr, details)
        else:
            log.debug("%s did not answer: %s", addr, exc.code() if hasattr(exc, "code") else exc)

    def bootstrap_partners(self, expect: int, timeout: float | None) -> list[str]:
        """Raft addresses of the other servers: from cluster.json, or gathered via --join."""
        if len(self.servers) >= max(expect, 1) and os.path.exists(self._servers_path()):
            return self._partners()
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self.servers) < expect:
            for addr in self.join + [s["rpc_addr"] for n, s in list(self.servers.items()) if n != self.node_name]:
                self._register_with(addr)
            if len(self.servers) >= expect or self._stop.is_set():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.servers)} of {expect} servers found via --join {self.join}")
            time.sleep(0.3)
        # Exactly the first `expect` servers by name: every server computes the same set.
        chosen = dict(sorted(self.servers.items())[:expect])
        self.servers = chosen
        self.save_servers()
        return self._partners()

    def _partners(self) -> list[str]:
        return sorted(s["raft_addr"] for n, s in self.servers.items() if n != self.node_name)

    # -- background loops --------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._outbox_loop, "results-out")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.leave()
        self.channels.close()

    def _candidates(self) -> list[str]:
        ordered = [self.leader_rpc_addr() or "", self._leader_hint]
        ordered += [s["rpc_addr"] for s in self.servers.values()] + self.join
        seen, out = set(), []
        for addr in ordered:
            if addr and addr not in seen:
                seen.add(addr)
                out.append(addr)
        return out

    def _heartbeat_once(self) -> bool:
        for addr in self._candidates():
            try:
                response = self.channels.cluster(addr).Heartbeat(self._heartbeat_request(), timeout=RPC_TIMEOUT)
            except grpc.RpcError as exc:
                self._diagnose(addr, exc)
                continue
            if response.leader_addr:
                self._leader_hint = response.leader_addr
            if response.ok:
                self._settle_results(response)
                if response.heartbeat_interval_ms:
                    self.heartbeat_interval = max(self.base_interval, response.heartbeat_interval_ms / 1000)
                return True
            # The leader does not know us (yet, e.g. it was just elected): register with it.
            if response.leader_addr == addr and self._register_with(addr) is not None:
                return True
        return False

    def _heartbeat_request(self) -> cluster_pb2.HeartbeatRequest:
        unconfirmed = self.results.refs()
        return cluster_pb2.HeartbeatRequest(
            node_name=self.node_name,
            # An unconfirmed result still counts as running, so the leader does not reap it as lost.
            running_execution_ids=self.running_ids() + self.results.execution_ids(),
            unconfirmed_results=[cluster_pb2.ExecutionRef(job_name=j, execution_id=e) for j, e in unconfirmed],
        )

    def _settle_results(self, response: cluster_pb2.HeartbeatResponse) -> None:
        self.results.confirm((ref.job_name, ref.execution_id) for ref in response.committed_results)
        for record in self.results.due():
            log.info("result of %s/%s not confirmed yet: sending it again", record["job_name"], record["id"])
            self._outbox.put(record)

    def _heartbeat_loop(self) -> None:
        # Register with the first server that answers, so the cluster knows our tags at once.
        for addr in self._candidates():
            if self._register_with(addr) is not None:
                log.info("registered with %s", addr)
                break
        else:
            log.warning(
                "no server answered at %s yet; retrying every %.0fs", self._candidates(), self.heartbeat_interval
            )
        while not self._stop.wait(self.heartbeat_interval):
            try:
                self._heartbeat_once()
            except Exception:
                log.exception("heartbeat failed")

    def deliver(self, record: dict[str, Any]) -> None:
        """Queue a result for ``ExecutionDone`` (the stream to its leader broke)."""
        if record.get("status") == "running":
            return  # only final results are delivered this way
        self.results.hold(record)
        self._outbox.put(record)

    def reported(self, record: dict[str, Any]) -> None:
        """A final result handed to the leader on its ``WatchRuns`` stream: hold it until confirmed."""
        self.results.hold(record)

    def _outbox_loop(self) -> None:
        from dkron.cluster.delivery import done_request

        pending: dict[str, Any] | None = None
        while not self._stop.is_set():
            if pending is None:
                try:
                    pending = self._outbox.get(timeout=0.5)
                except queue.Empty:
                    continue
            request = done_request(pending, self.node_name)
            for addr in self._candidates():
                try:
                    self.channels.cluster(addr).ExecutionDone(request, timeout=RPC_TIMEOUT)
                    pending = None
                    break
                except grpc.RpcError:
                    continue
            if pending is not None:
                time.sleep(0.5)

    def fetch_state(self, min_index: int, dest: str, timeout: float = 60.0) -> bool:
        """Download a peer's state database copy covering ``min_index`` to ``dest``.

        Tries the leader first (it sent the snapshot marker, so it has the rows), then the
        other servers. Runs on the Raft tick thread, hence the overall deadline.
        """
        deadline = time.monotonic() + timeout
        own = self.servers.get(self.node_name, {}).get("rpc_addr")
        for addr in self._candidates():
            remaining = deadline - time.monotonic()
            if addr == own or remaining <= 0:
                continue
            part = dest + ".part"
            try:
                written, total = 0, -1
                request = cluster_pb2.FetchStateRequest(min_applied_index=min_index)
                with open(part, "wb") as f:
                    for chunk in self.channels.cluster(addr).FetchState(request, timeout=remaining):
                        f.write(chunk.data)
                        written += len(chunk.data)
                        total = chunk.total_bytes
                if written != total:
                    raise OSError(f"state copy from {addr} cut short ({written} of {total} bytes)")
                os.replace(part, dest)
                log.info("fetched a %d-byte state copy from %s", written, addr)
                return True
            except grpc.RpcError as exc:
                log.warning("no state copy from %s: %s", addr, exc.details() if hasattr(exc, "details") else exc)
            except OSError as exc:
                log.warning("no state copy from %s: %s", addr, exc)
        return False

    def leave(self) -> None:
        for addr in self._candidates():
            try:
                self.channels.cluster(addr).Leave(
                    cluster_pb2.LeaveRequest(node_name=self.node_name), timeout=RPC_TIMEOUT
                )
                return
            except grpc.RpcError:
                continue

    def forward(self, command: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        """Run a write that needs the leader (e.g. a manual run) on the leader."""
        leader = self.leader_rpc_addr()
        if not leader:
            raise ForwardError("no leader is elected right now; retry", 503)
        request = cluster_pb2.ForwardWriteRequest(command=command, payload_json=json.dumps(payload).encode())
        try:
            response = self.channels.cluster(leader).ForwardWrite(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise ForwardError(f"the leader at {leader} did not answer: {exc.code().name}", 503) from None
        if not response.ok:
            raise ForwardError(response.error, response.http_status or 500)
        return json.loads(response.result_json or b"null")

    # -- Raft peers --------------------------------------------------------------------------
    def raft_peers(self) -> list[dict[str, Any]]:
        if self.raft is None:
            return []
        leader = self.raft.leader_addr() or ""
        connected_partners = self.raft.connected_partners()
        peers = []
        for name, info in sorted(self.servers.items()):
            raft_addr = info["raft_addr"]
            connected = name == self.node_name or raft_addr in connected_partners
            peers.append(
                {
                    "node_name": name,
                    "address": raft_addr,
                    "leader": raft_addr == leader,
                    "voter": True,
                    "status": "alive" if connected else "unreachable",
                }
            )
        return peers

    def remove_server(self, target: str) -> str:
        name = next((n for n, s in self.servers.items() if target in (n, s["raft_addr"], s["rpc_addr"])), None)
        if name is None:
            raise ValueError(f"{target!r} is not a server of this cluster")
        raft_addr = self.servers[name]["raft_addr"]
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def callback(result: Any, error: Any) -> None:
            outcome["error"] = error
            done.set()

        self.raft.removeNodeFromCluster(raft_addr, callback=callback)
        if not done.wait(10) or outcome.get("error"):
            raise ValueError(f"removing {name} failed: {outcome.get('error', 'timeout')}")
        # Replicated, so that every server forgets it (list-peers, cluster.json), not only this one.
        self.raft.write("remove_server", {"name": name}, timeout=10)
        return f"removed {name} ({raft_addr})"

    def forget_server(self, name: str) -> None:
        """Applied on every server when a server is removed from the cluster."""
        if self.servers.pop(name, None) is not None:
            self.save_servers()
        self.membership.forget(name)
