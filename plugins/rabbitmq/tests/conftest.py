"""A real RabbitMQ for the tests: one server per session, on loopback and free ports.

It is started in the foreground with its own epmd, as ``shared/reference/brokers.md`` §B.3
describes (no systemd, nothing daemonised), and stopped by process group afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult
from dkron.testing import free_port
from dkron_executor_rabbitmq import RabbitMQExecutor

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = "epmd"
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Broker:
    port: int
    base: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def connect(self) -> pika.BlockingConnection:
        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        params.socket_timeout = 2
        params.stack_timeout = 5
        return pika.BlockingConnection(params)

    def log(self) -> str:
        try:
            return (self.base / "server.out").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen[bytes], group: bool) -> None:
    if proc.poll() is None:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            try:
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            except ProcessLookupError:
                pass
            proc.wait(5)
    if group:  # leftovers of the group (erl_child_setup, inet_gethost) once the leader is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if not RABBITMQ_SERVER.exists():
        pytest.skip(f"RabbitMQ is not installed ({RABBITMQ_SERVER} is missing; apt-get install rabbitmq-server)")
    base = tmp_path_factory.mktemp("rabbit")
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text("loopback_users = none\n")
    amqp_port, epmd_port, dist_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "HOME": str(base),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_NODENAME": f"dkrontest{amqp_port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_SERVER_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    broker = Broker(amqp_port, base)
    epmd = subprocess.Popen(
        [EPMD, "-address", "127.0.0.1", "-port", str(epmd_port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _port_open(epmd_port):  # the server must find our epmd, not start its own
            if epmd.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"epmd did not start on 127.0.0.1:{epmd_port} (rc={epmd.poll()})")
            time.sleep(0.02)
        with open(base / "server.out", "wb") as out:
            server = subprocess.Popen(
                [str(RABBITMQ_SERVER)], env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
            )
        while True:
            if server.poll() is not None:
                pytest.fail(f"rabbitmq-server exited with {server.returncode}:\n{broker.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"RabbitMQ not ready on 127.0.0.1:{amqp_port} after {READY_TIMEOUT:g}s:\n{broker.log()}")
            if _port_open(amqp_port):
                try:
                    broker.connect().close()
                    break
                except pika.exceptions.AMQPError:
                    pass
            time.sleep(0.1)
        yield broker
    finally:
        if server is not None:
            _stop(server, group=True)
        _stop(epmd, group=False)  # by PID, as brokers.md says


class RecordingSink:
    """An OutputSink that keeps everything written to it."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()

    def write(self, chunk: bytes | str) -> None:
        with self._lock:
            self._chunks.append(chunk.encode() if isinstance(chunk, str) else chunk)

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode()


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    return f"dkron-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def run() -> Callable[..., tuple[ExecutionResult, RecordingSink]]:
    """Validate ``config`` like the core does, then execute it; returns (result, sink)."""
    executor = RabbitMQExecutor()

    def _run(
        config: dict[str, str], cancel: CancelToken | None = None, **request: object
    ) -> tuple[ExecutionResult, RecordingSink]:
        sink = RecordingSink()
        fields: dict[str, object] = {"job_name": "job1", "run_id": "job1@1", "execution_id": "exec-1", **request}
        req = ExecutionRequest(config=executor.validate(config), **fields)  # type: ignore[arg-type]
        return executor.execute(req, sink, cancel or CancelToken()), sink

    return _run
