"""With --encrypt, a peer without the cluster key gets nothing in and changes nothing.

Real processes: an encrypted server, then three intruders: an agent with another key (gRPC
mutual TLS), a server with another key trying to bootstrap with it, and a raw TCP client
sending an unauthenticated pysyncobj-style pickle to the Raft port (pysyncobj without a
password would execute it).
"""

from __future__ import annotations

import pickle
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from dkron.testing import AgentProcess, free_port, spawn_node


def keygen() -> str:
    return subprocess.run(
        [sys.executable, "-m", "dkron.cli", "keygen"], capture_output=True, text=True, check=True
    ).stdout.strip()


def start_node(tmp_path: Path, name: str, key: str, *extra: str) -> subprocess.Popen[bytes]:
    return spawn_node(tmp_path, name, "--encrypt", key, *extra)


class Evil:
    """Writes a marker file if it is ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_peers_without_the_key_are_refused_and_change_nothing(agent_factory, tmp_path):
    key = keygen()
    server = agent_factory(tmp_path / "server", extra_args=("--encrypt", key)).start()
    job = {"name": "guarded", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "true"}}
    assert server.post("/v1/jobs", job).status == 201
    before = server.get("/v1/jobs").body
    rpc = next(m["Tags"]["rpc_addr"] for m in server.get("/v1/members").json())

    intruders = [
        start_node(tmp_path, "evil-agent", keygen(), "--retry-join", rpc),
        start_node(
            tmp_path,
            "evil-server",
            keygen(),
            "--server",
            "--bootstrap-expect",
            "2",
            "--http-addr",
            f"127.0.0.1:{free_port()}",
            "--raft-port",
            str(free_port()),
            "--retry-join",
            rpc,
        ),
    ]
    marker = tmp_path / "pwned"
    try:
        # A forged, unauthenticated Raft frame (length-prefixed zlib(pickle)) to the Raft port.
        frame = zlib.compress(pickle.dumps(Evil(marker), protocol=2))
        with socket.create_connection(("127.0.0.1", server.raft_port), timeout=5) as sock:
            sock.sendall(struct.pack("i", len(frame)) + frame)
            time.sleep(0.5)
        time.sleep(4)  # several heartbeat and bootstrap attempts
        names = {m["Name"] for m in server.get("/v1/members").json()}
        assert names == {"node1"}, f"an intruder joined: {names}"
        assert server.get("/v1/jobs").body == before, "an intruder changed the jobs"
        assert not marker.exists(), "the Raft port executed an unauthenticated pickle"
        assert server.get("/health").status == 200
        for proc in intruders:
            assert proc.poll() is None or proc.returncode != 0  # still trying, or gave up: never in
        evil_log = (tmp_path / "evil-agent.log").read_text()
        assert "same --encrypt key" in evil_log, evil_log[-2000:]
    finally:
        for proc in intruders:
            proc.kill()
            proc.wait(10)


def test_a_cli_without_the_key_cannot_talk_to_the_cluster(agent_factory, tmp_path):
    key = keygen()
    server: AgentProcess = agent_factory(tmp_path / "server", extra_args=("--encrypt", key)).start()
    rpc = next(m["Tags"]["rpc_addr"] for m in server.get("/v1/members").json())
    cmd = [sys.executable, "-m", "dkron.cli", "raft", "list-peers", "--rpc-addr", rpc]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
    allowed = subprocess.run([*cmd, "--encrypt", key], capture_output=True, text=True, timeout=30)
    assert allowed.returncode == 0 and "leader" in allowed.stdout
