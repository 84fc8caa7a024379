"""Helpers shared by the nats tests: real nats-server processes, a recording sink, a nats-py consumer.

Kept out of conftest.py so test modules can import them by a name no other plugin uses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dkron.contracts import ExecutionResult
from dkron.testing import free_port


def import_nats() -> Any:
    """nats-py, the independent subscriber; its absence skips the test that needs it."""
    return pytest.importorskip("nats", reason="nats-py (test dependency of dkron-executor-nats) is not installed")


def _nats_server_bin() -> str:
    found = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else "")
    if not found:
        pytest.skip("nats-server is not installed (Debian: apt-get install nats-server)")
    return found


@dataclass
class NatsServer:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):  # CONT first: a SIGSTOPped server ignores TERM
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_nats_server(tmp: Path, *args: str) -> NatsServer:
    """Start ``nats-server -a 127.0.0.1 -p PORT <args>`` and wait (<= 10 s) until it accepts connections."""
    binary = _nats_server_bin()
    port = free_port()
    log = tmp / f"nats-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = NatsServer(proc, port, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"nats-server did not open port {port} within 10 s: {log.read_text()}")


@dataclass
class TlsSetup:
    server: NatsServer
    ca_file: Path
    client_context: ssl.SSLContext


class RecordingSink:
    """An OutputSink that keeps what was written; ``on_line`` sees each debug line as it is written."""

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        self.parts: list[str] = []
        self.on_line = on_line
        self._lock = threading.Lock()

    def write(self, chunk: bytes | str) -> None:
        text = chunk.decode() if isinstance(chunk, bytes) else chunk
        with self._lock:
            self.parts.append(text)
        if self.on_line is not None:
            self.on_line(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


RunFn = Callable[..., tuple[ExecutionResult, RecordingSink]]
ConsumeFn = Callable[..., tuple[ExecutionResult, RecordingSink, list[bytes]]]


def run_and_consume(
    run: RunFn, config: dict[str, str], subscribe_url: str, subject: str, **connect: Any
) -> tuple[ExecutionResult, RecordingSink, list[bytes]]:
    """Subscribe to ``subject`` with nats-py, run the executor, and collect what arrives."""
    nats = import_nats()

    async def main() -> tuple[ExecutionResult, RecordingSink, list[bytes]]:
        client = await nats.connect(subscribe_url, allow_reconnect=False, connect_timeout=2, **connect)
        try:
            sub = await client.subscribe(subject)
            await client.flush()
            result, sink = await asyncio.to_thread(run, config)
            received: list[bytes] = []
            try:
                while True:
                    msg = await sub.next_msg(timeout=1.0 if result.success and not received else 0.2)
                    received.append(msg.data)
            except nats.errors.TimeoutError:
                pass
            return result, sink, received
        finally:
            await client.close()

    return asyncio.run(main())
