"""Transport security with real processes: HTTPS for the API, CA-based mutual TLS for gRPC.

* ``--http-tls-cert/--http-tls-key``: the API answers over HTTPS only, and a client that opens
  a connection and never speaks TLS does not hold up anyone else;
* ``--grpc-tls-ca/cert/key``: an agent with a certificate from the cluster's CA registers; an
  agent with a certificate from another CA (or none) never appears among the members.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dkron.testca import CA, SERVER_NAME
from dkron.testing import AgentProcess, spawn_node


def test_the_api_is_served_over_https(tmp_path):
    ca = CA(tmp_path / "pki", "http")
    leaf = ca.issue("api")
    agent = AgentProcess(
        tmp_path / "data",
        ca_file=ca.path,
        extra_args=("--http-tls-cert", str(leaf.cert), "--http-tls-key", str(leaf.key)),
    )
    try:
        agent.start()
        # A client that connects and never sends a TLS hello must not block the accept loop.
        with socket.create_connection(("127.0.0.1", agent.http_port), timeout=5):
            assert agent.get("/health").status == 200
            assert (
                agent.post(
                    "/v1/jobs",
                    {
                        "name": "tls",
                        "executor": "shell",
                        "schedule": "@manually",
                        "executor_config": {"command": "true"},
                    },
                ).status
                == 201
            )
        assert agent.get("/v1/jobs/tls").json()["name"] == "tls"
        plain = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=5)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/health")
            response = plain.getresponse()
            assert response.status >= 400  # a TLS server answering plain HTTP at all: refuse it too
            raise OSError("answered with an error")
    finally:
        agent.stop()


def test_http_tls_needs_both_files(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dkron.cli", "agent", "--server", "--http-tls-cert", str(tmp_path / "x.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "http-tls-key" in result.stderr


def start_agent(tmp_path: Path, name: str, join: str, *tls: str) -> subprocess.Popen[bytes]:
    return spawn_node(tmp_path, name, "--retry-join", join, *tls)


def tls_args(ca: CA, leaf_ca: CA, name: str) -> tuple[str, ...]:
    leaf = leaf_ca.issue(name)
    return (
        "--grpc-tls-ca",
        str(ca.path),
        "--grpc-tls-cert",
        str(leaf.cert),
        "--grpc-tls-key",
        str(leaf.key),
        "--grpc-tls-server-name",
        SERVER_NAME,
    )


def test_grpc_mtls_admits_only_certificates_of_the_cluster_ca(tmp_path):
    cluster_ca = CA(tmp_path / "pki", "cluster")
    other_ca = CA(tmp_path / "pki-other", "other")
    server = AgentProcess(tmp_path / "server", extra_args=tls_args(cluster_ca, cluster_ca, "server"))
    agents: list[subprocess.Popen[bytes]] = []
    try:
        server.start()
        rpc = next(m["Tags"]["rpc_addr"] for m in server.get("/v1/members").json())
        agents = [
            start_agent(tmp_path, "good-agent", rpc, *tls_args(cluster_ca, cluster_ca, "good")),
            # Trusts the cluster CA, but its own certificate is from another CA.
            start_agent(tmp_path, "evil-agent", rpc, *tls_args(cluster_ca, other_ca, "evil")),
            # No certificate at all (plaintext gRPC).
            start_agent(tmp_path, "plain-agent", rpc),
        ]
        server.wait_for(lambda: "good-agent" in {m["Name"] for m in server.get("/v1/members").json()}, timeout=30)
        time.sleep(3)  # several registration attempts of the others
        names = {m["Name"] for m in server.get("/v1/members").json()}
        assert names == {"node1", "good-agent"}, f"an agent without a cluster certificate joined: {names}"
        evil_log = (tmp_path / "evil-agent.log").read_text()
        assert "registered with" not in evil_log, evil_log[-2000:]
        # The operator CLI speaks the same mutual TLS.
        cli = [sys.executable, "-m", "dkron.cli", "raft", "list-peers", "--rpc-addr", rpc]
        good = subprocess.run(
            [*cli, *tls_args(cluster_ca, cluster_ca, "cli")], capture_output=True, text=True, timeout=30
        )
        assert good.returncode == 0 and "node1" in good.stdout, good.stderr
        bad = subprocess.run([*cli, *tls_args(cluster_ca, other_ca, "cli")], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1 and "node1" not in bad.stdout
    finally:
        for proc in agents:
            proc.terminate()
        for proc in agents:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        server.stop()
