"""Syslog addresses, message framing and sending (local socket, UDP or TCP), without a logger.

The wire format is the one Go's ``log/syslog`` (and so Dkron's processor) writes:

* local socket: ``<PRI>Mmm dd hh:mm:ss TAG[PID]: MESSAGE``
* network:      ``<PRI>YYYY-MM-DDThh:mm:ss+hh:mm HOSTNAME TAG[PID]: MESSAGE``

Over TCP each message is framed by octet counting (RFC 6587 §3.4.1, ``LEN SP MESSAGE``), so a
multi-line output stays one message. A message is at most :data:`MAX_MESSAGE_BYTES` long: the
output is cut at its start (its end is what explains a failure), on a line or at least a
UTF-8 character boundary, behind a marker that says how much was left out.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from logging.handlers import SysLogHandler
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_ADDRESS",
    "FACILITIES",
    "MAX_MESSAGE_BYTES",
    "TIMEOUT",
    "Address",
    "fit",
    "frame",
    "parse_address",
    "send",
]

DEFAULT_ADDRESS = "/dev/log"
DEFAULT_PORT = 514
#: Largest message sent (header included): rsyslog's default ``maxMessageSize`` is 8 KiB.
MAX_MESSAGE_BYTES = 8192
#: Upper bound, in seconds, on connecting and sending: a processor must never hold a run long.
TIMEOUT = 5.0

#: Facility names (lower case) to codes: kern, user, mail, daemon, auth, ..., cron, local0-7.
FACILITIES: dict[str, int] = dict(SysLogHandler.facility_names)


@dataclass(frozen=True)
class Address:
    """Where messages go: ``scheme`` is ``unix``, ``udp`` or ``tcp``."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_address(raw: str) -> Address:
    """``/dev/log``, ``unix:///path``, ``udp://host[:port]`` or ``tcp://host[:port]``; ValueError."""
    text = raw.strip() or DEFAULT_ADDRESS
    if text.startswith("/"):
        return Address("unix", path=text)
    if "://" not in text:
        raise ValueError(f"use udp://host:port, tcp://host:port or a socket path, got {raw!r}")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc:
            raise ValueError(f"use unix:///absolute/path, got {raw!r}")
        return Address("unix", path=parts.path)
    if scheme not in ("udp", "tcp"):
        raise ValueError(f"scheme must be udp, tcp or unix, got {parts.scheme!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"use {scheme}://host:port with nothing after the port, got {raw!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"port must be a number from 1 to 65535, got {raw!r}") from None
    if not parts.hostname:
        raise ValueError(f"a host is required, got {raw!r}")
    return Address(scheme, host=parts.hostname, port=port)


def fit(header: str, output: str, limit: int) -> str:
    """``header`` + ``output``, keeping the end of ``output`` so the whole is <= ``limit`` bytes."""
    head = header.encode()
    body = output.encode("utf-8", "replace")
    if len(head) + len(body) <= limit:
        return header + output
    marker_room = 64  # "[... N bytes of output left out ...]\n" fits in this
    keep = max(0, limit - len(head) - marker_room)
    tail = body[len(body) - keep :] if keep else b""
    # Start on a line boundary when one is near, else at least on a character boundary.
    newline = tail.find(b"\n", 0, 512)
    if newline != -1:
        tail = tail[newline + 1 :]
    while tail and (tail[0] & 0xC0) == 0x80:  # UTF-8 continuation byte
        tail = tail[1:]
    dropped = len(body) - len(tail)
    return f"{header}[... {dropped} bytes of output left out ...]\n{tail.decode('utf-8', 'replace')}"


def frame(address: Address, priority: int, tag: str, summary: str, output: str, *, now: float | None = None) -> bytes:
    """One syslog message as bytes: the syslog header, ``summary`` and as much of ``output`` as fits."""
    when = datetime.fromtimestamp(time.time() if now is None else now).astimezone()
    pid = os.getpid()
    if address.scheme == "unix":
        stamp = f"{when:%b} {when.day:2d} {when:%H:%M:%S}"
        head = f"<{priority}>{stamp} {tag}[{pid}]: "
    else:
        head = f"<{priority}>{when.isoformat(timespec='seconds')} {socket.gethostname()} {tag}[{pid}]: "
    # NUL ends a message for some receivers; keep it visible instead.
    text = output.replace("\x00", "\\0")
    return fit(head + summary.replace("\x00", "\\0"), text, MAX_MESSAGE_BYTES).encode("utf-8", "replace")


def _send_unix(path: str, data: bytes, timeout: float) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.send(data)
            return
    except OSError as exc:
        if exc.errno != getattr(os, "EPROTOTYPE", 91):  # the socket is a stream socket
            raise
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(data + b"\n")


def _resolve(address: Address, kind: int) -> list[tuple]:
    return socket.getaddrinfo(address.host, address.port, type=kind)


def send(address: Address, data: bytes, timeout: float = TIMEOUT) -> None:
    """Send one framed message; raises OSError. Takes at most about ``timeout`` seconds."""
    if address.scheme == "unix":
        _send_unix(address.path, data, timeout)
        return
    deadline = time.monotonic() + timeout
    kind = socket.SOCK_DGRAM if address.scheme == "udp" else socket.SOCK_STREAM
    last: OSError = OSError(f"cannot resolve {address.host!r}")
    for family, socktype, proto, _, sockaddr in _resolve(address, kind):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:g}s")
        try:
            with socket.socket(family, socktype, proto) as sock:
                sock.settimeout(remaining)
                if kind == socket.SOCK_DGRAM:
                    sock.sendto(data, sockaddr)
                else:
                    sock.connect(sockaddr)
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    sock.sendall(b"%d %s" % (len(data), data))
                return
        except OSError as exc:
            last = exc
    raise last
