"""One gRPC channel per remote address, reused by every call to it."""

from __future__ import annotations

import threading

import grpc

from dkron.cluster.security import Identity
from dkron.proto import agent_pb2_grpc, cluster_pb2_grpc

#: Options for every channel: fail fast on a dead peer instead of waiting minutes.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class Channels:
    """``identity`` (from the cluster key) makes every channel mutual TLS; None = plaintext."""

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def channel(self, addr: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(addr)
            if channel is None:
                channel = self._channels[addr] = open_channel(addr, self.identity)
            return channel

    def agent(self, addr: str) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(self.channel(addr))

    def cluster(self, addr: str) -> cluster_pb2_grpc.ClusterServiceStub:
        return cluster_pb2_grpc.ClusterServiceStub(self.channel(addr))

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


def open_channel(addr: str, identity: Identity | None) -> grpc.Channel:
    if identity is None:
        return grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
    options = list(CHANNEL_OPTIONS)
    if identity.server_name:  # key-derived: every node is CLUSTER_NAME; CA-issued: as configured
        options.append(("grpc.ssl_target_name_override", identity.server_name))
    return grpc.secure_channel(addr, identity.channel_credentials(), options=options)
