"""Test helpers for Dkron and its plugin authors (a pytest plugin, entry point ``pytest11``).

Fixtures:
  ``dkron_agent``  a real single-node ``dkron agent`` process on free loopback ports, with a
                   fresh data dir; stopped (and killed if it must be) after the test.
  ``agent_factory`` builds more of them (or the same data dir again, for restart tests).

Everything here uses real processes and real sockets on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpResult:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HttpResult {self.status} {self.body[:200]!r}>"


class AgentProcess:
    """A ``dkron agent --server`` subprocess with an HTTP client bound to it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        node_name: str = "node1",
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        http_port: int | None = None,
        raft_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.node_name = node_name
        self.http_port = http_port or free_port()
        self.raft_port = raft_port or free_port()
        self.extra_args = extra_args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{node_name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait: float = 30.0) -> AgentProcess:
        args = [
            sys.executable,
            "-m",
            "dkron.cli",
            "agent",
            "--server",
            "--bootstrap-expect",
            "1",
            "--data-dir",
            str(self.data_dir),
            "--node-name",
            self.node_name,
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            "--raft-port",
            str(self.raft_port),
            "--rpc-port",
            str(free_port()),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        self.wait_healthy(wait)
        return self

    def wait_healthy(self, wait: float = 30.0) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/health", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"agent not healthy after {wait}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> HttpResult:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return HttpResult(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return HttpResult(err.code, err.read(), dict(err.headers))

    def get(self, path: str, **kw: Any) -> HttpResult:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> HttpResult:
        return self.request("POST", path, body, **kw)

    def wait_for(self, predicate: Any, timeout: float = 15.0, interval: float = 0.1) -> Any:
        """Poll ``predicate()`` until it returns something truthy; fail with the agent log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s; agent log:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[AgentProcess] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> AgentProcess:
        agent = AgentProcess(data_dir or tmp_path / f"data{len(started)}", **kwargs)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop(timeout=10)


@pytest.fixture
def dkron_agent(agent_factory: Any) -> AgentProcess:
    return agent_factory().start()
