"""Membership at scale: N agents registered and heartbeating to one leader, and target selection.

    .venv/bin/python bench/bench_membership.py --agents 1000 --seconds 20

1. Starts a real server (``dkron agent --server``) on loopback.
2. Simulates ``--agents`` agents in this process: each registers once over gRPC (a replicated
   registration), then heartbeats every second like a real agent (the requests are spread over
   the second by a small thread pool), for ``--seconds``.
3. Measures the leader's CPU over that window (psutil; 100 % = one core) and the heartbeat RPC
   latency seen by the simulated agents.
4. Times ``Membership.select`` (target selection) over N registered nodes with mixed tags.

Targets (issue: "The cluster"): leader CPU <= 25 % of one core at 1,000 agents; selection < 1 ms.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil

from dkron.cluster.membership import Membership
from dkron.proto import cluster_pb2, cluster_pb2_grpc
from dkron.testing import AgentProcess


def tags_for(i: int) -> dict[str, str]:
    return {"pool": random.choice(["web", "batch", "db"]), "zone": f"z{i % 4}", "rack": f"r{i % 25}"}


def selection_times(n: int, calls: int) -> dict[str, float]:
    membership = Membership(timeout=60)
    for i in range(n):
        membership.heartbeat(f"agent{i}", f"10.0.{i // 250}.{i % 250}:6868", tags_for(i))
    out = {}
    for label, tags in (
        ("no tags", {}),
        ("pool=web:2", {"pool": "web:2"}),
        ("pool+zone", {"pool": "web", "zone": "z1"}),
    ):
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            membership.select(tags)
            samples.append((time.perf_counter() - start) * 1000)
        out[label] = statistics.median(samples)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=16, help="client threads sending heartbeats")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="dkron-membership-"))
    server = AgentProcess(workdir / "data").start()
    try:
        rpc = next(m["Tags"]["rpc_addr"] for m in server.get("/v1/members").json())
        stub = cluster_pb2_grpc.ClusterServiceStub(grpc.insecure_channel(rpc))
        names = [f"sim{i}" for i in range(args.agents)]
        started = time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            list(
                pool.map(
                    lambda i: stub.Register(
                        cluster_pb2.RegisterRequest(
                            node_name=names[i], rpc_addr=f"127.0.0.2:{20000 + i}", tags=tags_for(i), version="sim"
                        ),
                        timeout=30,
                    ),
                    range(args.agents),
                )
            )
        register_s = time.monotonic() - started
        proc = psutil.Process(server.proc.pid)
        latencies: list[float] = []

        intervals: list[float] = []

        def beat(name: str) -> None:
            t = time.perf_counter()
            response = stub.Heartbeat(cluster_pb2.HeartbeatRequest(node_name=name), timeout=5)
            latencies.append((time.perf_counter() - t) * 1000)
            intervals.append(max(1.0, response.heartbeat_interval_ms / 1000))

        cpu_before, wall_before = proc.cpu_times(), time.monotonic()
        with ThreadPoolExecutor(args.threads) as pool:
            deadline = time.monotonic() + args.seconds
            interval = 1.0  # as a real agent: the leader's answer sets the next interval
            while time.monotonic() < deadline:
                begun = time.monotonic()
                list(pool.map(beat, names))
                interval = statistics.median(intervals[-len(names) :])
                time.sleep(max(0.0, interval - (time.monotonic() - begun)))
        cpu_after, wall = proc.cpu_times(), time.monotonic() - wall_before
        cpu_pct = 100 * ((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)) / wall
        alive = sum(1 for m in server.get("/v1/members").json() if m["statusText"] == "alive")
        beats_per_s = len(latencies) / wall
    finally:
        server.stop()
    selection = selection_times(args.agents, 2000)
    latencies.sort()
    result = {
        "agents": args.agents,
        "register_seconds": round(register_s, 2),
        "alive_members": alive,
        "heartbeats_per_s": round(beats_per_s, 1),
        "heartbeat_interval_s": interval,
        "leader_cpu_pct": round(cpu_pct, 1),
        "heartbeat_p50_ms": round(latencies[len(latencies) // 2], 2),
        "heartbeat_p99_ms": round(latencies[int(len(latencies) * 0.99)], 2),
        "select_median_ms": {k: round(v, 4) for k, v in selection.items()},
    }
    print(f"agents registered            {args.agents} in {register_s:.1f} s; alive in /v1/members: {alive}")
    print(
        f"heartbeats                   {beats_per_s:.0f}/s, RPC p50 {result['heartbeat_p50_ms']} ms, "
        f"p99 {result['heartbeat_p99_ms']} ms"
    )
    print(f"leader CPU                   {cpu_pct:.1f} % of one core (target <= 25 %)")
    for label, ms in selection.items():
        print(f"target selection ({label:10}) {ms * 1000:.0f} µs median (target < 1 ms)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
