"""A minimal, synchronous NATS client: connect, authenticate, publish, and confirm with PING/PONG.

It speaks the documented NATS client protocol (``INFO``, ``CONNECT``, ``PUB``, ``PING``/``PONG``,
``+OK``/``-ERR``) over a non-blocking socket, optionally upgraded to TLS after ``INFO`` as
nats-server 2.x expects. Every wait is a ``poll()`` of at most :data:`SLICE` seconds, so a
cancelled execution or a passed deadline is noticed promptly; nothing here starts a thread or an
event loop, and the socket is always closed by the caller (the connection is a context manager).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from dkron.contracts import CancelToken
from dkron_executor_nats.config import Server

__all__ = ["SLICE", "Cancelled", "Connection", "NatsError", "TimedOut", "open_connection"]

#: Longest single wait, in seconds, between checks of the cancel token and the deadline.
SLICE = 0.1
#: Longest protocol line accepted from the server (INFO lines are a few KB).
MAX_LINE = 1 << 20
CLIENT_NAME = "dkron-executor-nats"
CLIENT_VERSION = "0.1.0"


class NatsError(Exception):
    """A one-line reason the server or the network refused us."""


class Cancelled(Exception):
    """The execution's cancel token was set while waiting."""


class TimedOut(Exception):
    """The deadline passed while waiting; the message says for what."""


def _wait(sock: socket.socket, events: int, deadline: float, cancel: CancelToken, doing: str) -> None:
    poller = select.poll()
    poller.register(sock, events | select.POLLERR | select.POLLHUP)
    while True:
        if cancel.cancelled:
            raise Cancelled(cancel.reason)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut(doing)
        if poller.poll(max(1, int(min(remaining, SLICE) * 1000))):
            return


def _connect_socket(server: Server, deadline: float, cancel: CancelToken) -> socket.socket:
    try:
        addresses = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NatsError(f"cannot resolve {server.host}: {exc.strerror}") from None
    reason = "no address"
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code in (errno.EINPROGRESS, errno.EAGAIN):
                _wait(sock, select.POLLOUT, deadline, cancel, "connecting")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            reason = os.strerror(code)
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise NatsError(f"cannot connect: {reason}")


def _server_error(line: bytes) -> str:
    """``-ERR 'Authorization Violation'`` -> ``Authorization Violation``."""
    text = line[4:].decode("utf-8", "replace").strip()
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text


class Connection:
    """One authenticated connection to one server. Use as a context manager."""

    def __init__(self, sock: socket.socket, server: Server, cancel: CancelToken, deadline: float) -> None:
        self.sock: socket.socket = sock
        self.server = server
        self.cancel = cancel
        self.deadline = deadline
        self.info: dict[str, Any] = {}
        self._buf = bytearray()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- raw I/O ---------------------------------------------------------------------------------
    def _io(self, action: Callable[[], Any], events: int, doing: str) -> Any:
        while True:
            try:
                return action()
            except ssl.SSLWantWriteError:
                _wait(self.sock, select.POLLOUT, self.deadline, self.cancel, doing)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                _wait(self.sock, events, self.deadline, self.cancel, doing)

    def send(self, data: bytes, doing: str) -> None:
        view = memoryview(data)
        try:
            while view:
                sent = self._io(functools.partial(self.sock.send, view), select.POLLOUT, doing)
                view = view[sent:]
        except (ssl.SSLError, OSError) as exc:
            raise NatsError(f"connection lost while {doing}: {exc.strerror or exc}") from None

    def read_line(self, doing: str) -> bytes:
        while True:
            end = self._buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                return line
            if len(self._buf) > MAX_LINE:
                raise NatsError(f"protocol error while {doing}: line longer than {MAX_LINE} bytes")
            try:
                chunk = self._io(lambda: self.sock.recv(65536), select.POLLIN, doing)
            except (ssl.SSLError, OSError) as exc:
                raise NatsError(f"connection lost while {doing}: {exc.strerror or exc}") from None
            if not chunk:
                raise NatsError(f"connection closed by the server while {doing}")
            self._buf += chunk

    # -- protocol --------------------------------------------------------------------------------
    def read_info(self) -> dict[str, Any]:
        line = self.read_line("waiting for the server's INFO")
        if not line.startswith(b"INFO "):
            raise NatsError(f"not a NATS server (first line {line[:40]!r})")
        try:
            self.info = json.loads(line[5:])
        except ValueError:
            raise NatsError("not a NATS server (INFO is not JSON)") from None
        return self.info

    def start_tls(self, context: ssl.SSLContext) -> None:
        tls = context.wrap_socket(self.sock, server_hostname=self.server.host, do_handshake_on_connect=False)
        self.sock = tls
        try:
            self._io(tls.do_handshake, select.POLLIN, "in the TLS handshake")
        except ssl.SSLCertVerificationError as exc:
            raise NatsError(f"TLS certificate verification failed: {exc.verify_message}") from None
        except (ssl.SSLError, OSError) as exc:
            raise NatsError(f"TLS handshake failed: {exc.strerror or exc}") from None

    def until_pong(self, doing: str) -> None:
        """Read until the server's PONG, answering its PINGs; ``-ERR`` fails with the server's words."""
        while True:
            line = self.read_line(doing)
            if line == b"PONG":
                return
            if line == b"PING":
                self.send(b"PONG\r\n", doing)
            elif line.startswith(b"-ERR"):
                raise NatsError(_server_error(line))
            elif line.startswith(b"INFO "):
                with contextlib.suppress(ValueError):  # asynchronous INFO (cluster changes): keep the newest
                    self.info.update(json.loads(line[5:]))
            elif line != b"+OK":
                raise NatsError(f"protocol error while {doing}: unexpected {line[:40]!r}")

    def authenticate(self, user: str, password: str, token: str) -> None:
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "tls_required": isinstance(self.sock, ssl.SSLSocket),
            "name": CLIENT_NAME,
            "lang": "python",
            "version": CLIENT_VERSION,
            "protocol": 1,
            "headers": False,
            "no_responders": False,
        }
        if user:
            options["user"] = user
            options["pass"] = password
        elif token:
            options["auth_token"] = token
        payload = json.dumps(options, separators=(",", ":")).encode()
        self.send(b"CONNECT " + payload + b"\r\nPING\r\n", "sending CONNECT")
        self.until_pong("waiting for the server to accept CONNECT")

    def publish(self, subject: str, payload: bytes) -> None:
        """PUB, then PING and wait for PONG: the server has processed the PUB once PONG arrives."""
        head = f"PUB {subject} {len(payload)}\r\n".encode()
        self.send(head + payload + b"\r\nPING\r\n", "publishing")
        self.until_pong("waiting for the server to confirm the publish")


def open_connection(
    server: Server,
    *,
    user: str,
    password: str,
    token: str,
    ca_file: str | None,
    cancel: CancelToken,
    deadline: float,
    log: Callable[[str], None],
) -> Connection:
    """Connect, upgrade to TLS if asked or required, authenticate; the caller closes the result."""
    sock = _connect_socket(server, deadline, cancel)
    conn = Connection(sock, server, cancel, deadline)
    try:
        info = conn.read_info()
        log(f"connected to {server.address}: server {info.get('version', '?')} id {info.get('server_id', '?')}")
        wants_tls = server.scheme == "tls" or ca_file is not None
        if info.get("tls_required") or wants_tls:
            if wants_tls and not (info.get("tls_required") or info.get("tls_available")):
                raise NatsError("TLS was asked for but the server does not offer it")
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise NatsError(f"cannot load tlsRootCAsFile {ca_file}: {exc.strerror or exc}") from None
            conn.start_tls(context)
            log(f"TLS established ({conn.sock.version() if isinstance(conn.sock, ssl.SSLSocket) else '?'})")
        # Credentials in the URL win over the config keys, as in nats.go.
        if server.user or server.token:
            user, password, token = server.user, server.password, server.token
        conn.authenticate(user, password, token)
        log("authenticated" if (user or token) else "connected without credentials")
        return conn
    except BaseException:
        conn.close()
        raise
