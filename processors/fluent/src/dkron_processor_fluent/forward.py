"""The Fluent forward protocol, client side: one event in Message mode over TCP.

An event is the msgpack array ``[tag, time, record]``, with ``time`` as an EventTime (msgpack
extension type 0: seconds and nanoseconds as two big-endian uint32), which Fluentd >= 0.14 and
Fluent Bit read. See https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TIMEOUT",
    "Endpoint",
    "encode_event",
    "event_time",
    "parse_endpoint",
    "send",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 24224
#: Upper bound, in seconds, on connecting and sending: a processor must never hold a run long.
TIMEOUT = 5.0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{what} must be a port number from 1 to 65535, got {text!r}")
    return int(text)


def parse_endpoint(raw: str, default_port: int = DEFAULT_PORT) -> Endpoint:
    """``host:port``, ``host`` or ``[v6]:port``; raises ValueError."""
    text = raw.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"use [ipv6]:port, got {raw!r}")
        return Endpoint(host, _port(rest[1:], "port") if rest else default_port)
    if text.count(":") > 1:
        raise ValueError(f"write an IPv6 address in brackets, as [::1]:24224, got {raw!r}")
    host, sep, port = text.partition(":")
    if not host or any(ch.isspace() for ch in host) or "/" in host:
        raise ValueError(f"use host:port, got {raw!r}")
    return Endpoint(host, _port(port, "port") if sep else default_port)


def event_time(seconds: float) -> msgpack.ExtType:
    """Fluent's EventTime (ext type 0) for a Unix timestamp with sub-second precision."""
    whole = int(seconds)
    nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    return msgpack.ExtType(0, struct.pack(">II", whole, nanos))


def encode_event(tag: str, when: float, record: dict[str, Any]) -> bytes:
    return msgpack.packb([tag, event_time(when), record], use_bin_type=True)


def send(endpoint: Endpoint, data: bytes, timeout: float = TIMEOUT) -> None:
    """Connect and send ``data``; raises OSError. Takes at most about ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: OSError = OSError(f"cannot resolve {endpoint.host!r}")
    for family, socktype, proto, _, sockaddr in socket.getaddrinfo(
        endpoint.host, endpoint.port, type=socket.SOCK_STREAM
    ):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:g}s")
        try:
            with socket.socket(family, socktype, proto) as sock:
                sock.settimeout(remaining)
                sock.connect(sockaddr)
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            return
        except OSError as exc:
            last = exc
    raise last
