"""Socket plumbing that keeps every wait of an HTTP exchange cancellable.

All I/O happens on the executing thread, on a non-blocking socket: each time it would block,
:meth:`Guard.wait` polls the socket in short slices and checks the execution's
:class:`~dkron.contracts.CancelToken` and the request's deadline in between. So a kill, the
agent's shutdown or the job's ``timeout`` stop the request within ~0.1 s, whether it is
connecting, in the TLS handshake, waiting for the response, or reading the body. No helper
thread is needed. (Only name resolution, ``getaddrinfo``, cannot be interrupted.)

``http.client.HTTPResponse`` parses the response (status line, headers, chunked encoding)
from the :class:`GuardedSocket`'s buffered reader.
"""

from __future__ import annotations

import errno
import io
import os
import select
import socket
import ssl
import time

from dkron.contracts import CancelToken

__all__ = ["Cancelled", "ConnectError", "Guard", "GuardedSocket", "TimedOut", "open_connection"]

#: Longest single wait between two checks of the cancel token and the deadline.
SLICE = 0.1


class Cancelled(Exception):
    """The execution's CancelToken was set (kill, agent shutdown)."""


class TimedOut(Exception):
    """The request's deadline (the job's ``timeout``) passed."""


class ConnectError(Exception):
    """Name resolution, TCP connect or TLS handshake failed; the message is one line."""


class Guard:
    """The cancel token and the deadline of one request, plus what it is doing (for messages)."""

    def __init__(self, cancel: CancelToken, timeout: float) -> None:
        self.cancel = cancel
        self.deadline = time.monotonic() + timeout
        self.phase = "starting"

    def check(self) -> None:
        if self.cancel.cancelled:
            raise Cancelled(self.cancel.reason)
        if time.monotonic() >= self.deadline:
            raise TimedOut(self.phase)

    def wait(self, sock: socket.socket, events: int) -> None:
        """Block until ``sock`` is ready for ``events`` (select.POLLIN/POLLOUT), or raise."""
        poller = select.poll()
        poller.register(sock.fileno(), events)
        while True:
            self.check()
            remaining = min(SLICE, self.deadline - time.monotonic())
            if poller.poll(max(1, int(remaining * 1000))):
                return


def _connect_tcp(host: str, port: int, guard: Guard) -> socket.socket:
    guard.phase = f"resolving {host}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConnectError(f"cannot resolve host {host!r}: {str(exc.strerror).lower()}") from None
    guard.phase = f"connecting to {host}:{port}"
    last = "no address"
    for family, kind, proto, _, addr in infos:
        guard.check()
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                guard.wait(sock, select.POLLOUT)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            last = _strerror(err)
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise ConnectError(f"cannot connect to {host}:{port}: {last}")


def _strerror(err: int) -> str:
    return os.strerror(err).lower()


def _handshake(sock: socket.socket, host: str, port: int, context: ssl.SSLContext, guard: Guard) -> ssl.SSLSocket:
    guard.phase = f"in the TLS handshake with {host}:{port}"
    tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                guard.wait(tls, select.POLLIN)
            except ssl.SSLWantWriteError:
                guard.wait(tls, select.POLLOUT)
    except ssl.SSLCertVerificationError as exc:
        tls.close()
        raise ConnectError(f"TLS handshake with {host}:{port} failed: {exc.verify_message}") from None
    except (ssl.SSLError, OSError) as exc:
        tls.close()
        reason = str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)
        reason = reason.replace("_", " ") if reason.isupper() else reason
        raise ConnectError(f"TLS handshake with {host}:{port} failed: {reason.lower()}") from None
    except BaseException:
        tls.close()
        raise


def open_connection(host: str, port: int, context: ssl.SSLContext | None, guard: Guard) -> socket.socket:
    """A connected non-blocking socket (TLS-wrapped and handshaken if ``context`` is given)."""
    sock = _connect_tcp(host, port, guard)
    if context is None:
        return sock
    return _handshake(sock, host, port, context, guard)


class _GuardedRaw(io.RawIOBase):
    def __init__(self, owner: GuardedSocket) -> None:
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        sock, guard = self._owner.sock, self._owner.guard
        while True:
            guard.check()
            try:
                return sock.recv_into(buffer)
            except (BlockingIOError, ssl.SSLWantReadError):
                guard.wait(sock, select.POLLIN)
            except ssl.SSLWantWriteError:
                guard.wait(sock, select.POLLOUT)


class GuardedSocket:
    """The part of the socket API ``http.client.HTTPResponse`` uses, with guarded waits.

    ``close()`` is a no-op: the executor owns the real socket and closes it itself (the
    response would otherwise close it under the reader).
    """

    def __init__(self, sock: socket.socket, guard: Guard) -> None:
        self.sock = sock
        self.guard = guard

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self.guard.check()
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                self.guard.wait(self.sock, select.POLLOUT)
                continue
            except ssl.SSLWantReadError:
                self.guard.wait(self.sock, select.POLLIN)
                continue
            view = view[sent:]

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_GuardedRaw(self), 64 * 1024)

    def close(self) -> None:
        pass
