"""Cluster commands: ``dkron leave``, ``dkron raft list-peers``, ``dkron raft remove-peer``.

They talk gRPC to a node's ``--rpc-addr`` (Dkron's flag; default 127.0.0.1:6868).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from google.protobuf import empty_pb2

from dkron.cluster.channels import open_channel
from dkron.cluster.security import ClusterKeyError, identity_from_config
from dkron.proto import cluster_pb2, cluster_pb2_grpc

DEFAULT_RPC_ADDR = "127.0.0.1:6868"


def _tls_flags(parser: argparse.ArgumentParser) -> None:
    """CA-based mutual TLS (the agents' --grpc-tls-* options), instead of --encrypt."""
    for name in ("ca", "cert", "key", "server-name"):
        option = f"grpc-tls-{name}"
        env = "DKRON_" + option.upper().replace("-", "_")
        parser.add_argument(f"--{option}", default=os.environ.get(env, ""), help=f"as the agent's --{option}")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    leave = sub.add_parser("leave", help="make a node leave the cluster gracefully and stop")
    leave.add_argument("--encrypt", default=os.environ.get("DKRON_ENCRYPT", ""), help="the cluster key, if set")
    leave.add_argument("--rpc-addr", default=DEFAULT_RPC_ADDR, help="gRPC address of the node to stop")
    leave.add_argument("--node-name", default="", help="name of the node (default: the one at --rpc-addr)")
    _tls_flags(leave)
    raft = sub.add_parser("raft", help="Raft operations on the servers")
    raft_sub = raft.add_subparsers(dest="raft_command", metavar="COMMAND")
    peers = raft_sub.add_parser("list-peers", help="list the Raft peers as a server sees them")
    peers.add_argument("--encrypt", default=os.environ.get("DKRON_ENCRYPT", ""), help="the cluster key, if set")
    peers.add_argument("--rpc-addr", default=DEFAULT_RPC_ADDR, help="gRPC address of a server")
    _tls_flags(peers)
    remove = raft_sub.add_parser("remove-peer", help="remove a (dead) server from the Raft configuration")
    remove.add_argument("--encrypt", default=os.environ.get("DKRON_ENCRYPT", ""), help="the cluster key, if set")
    remove.add_argument("--rpc-addr", default=DEFAULT_RPC_ADDR, help="gRPC address of a server")
    remove.add_argument("--peer-id", required=True, help="node name or Raft address of the server to remove")
    _tls_flags(remove)


def _stub(args: argparse.Namespace) -> cluster_pb2_grpc.ClusterServiceStub:
    identity = identity_from_config({k.replace("_", "-"): v for k, v in vars(args).items()})
    return cluster_pb2_grpc.ClusterServiceStub(open_channel(args.rpc_addr, identity))


def _fail(command: str, exc: grpc.RpcError) -> int:
    print(f"dkron {command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ClusterKeyError as exc:
        print(f"dkron {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "leave":
        return _leave(args)
    if args.raft_command == "list-peers":
        try:
            peers = _stub(args).RaftListPeers(empty_pb2.Empty(), timeout=5).peers
        except grpc.RpcError as exc:
            return _fail("raft list-peers", exc)
        rows = [("Node", "ID", "Address", "State", "Voter", "Status")]
        rows += [
            (p.node_name, p.node_name, p.address, "leader" if p.leader else "follower", str(p.voter).lower(), p.status)
            for p in peers
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0
    if args.raft_command == "remove-peer":
        target = args.peer_id
        request = (
            cluster_pb2.RemovePeerRequest(address=target)
            if ":" in target
            else cluster_pb2.RemovePeerRequest(node_name=target)
        )
        try:
            print(_stub(args).RaftRemovePeer(request, timeout=15).message)
        except grpc.RpcError as exc:
            return _fail("raft remove-peer", exc)
        return 0
    print("usage: dkron raft {list-peers|remove-peer} [--rpc-addr ADDR]", file=sys.stderr)
    return 2


def _leave(args: argparse.Namespace) -> int:
    try:
        ack = _stub(args).Leave(cluster_pb2.LeaveRequest(node_name=args.node_name), timeout=60)
    except grpc.RpcError as exc:
        return _fail("leave", exc)
    print(ack.message)
    return 0
