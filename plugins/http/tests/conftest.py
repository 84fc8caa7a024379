"""Real HTTP and HTTPS servers on 127.0.0.1, a throwaway CA, and a ``run`` helper."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult
from dkron_executor_http import HttpExecutor


class RecordingSink:
    """An OutputSink that remembers every chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self._lock = threading.Lock()

    def write(self, chunk: bytes | str) -> None:
        data = chunk.encode() if isinstance(chunk, str) else chunk
        with self._lock:
            self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


RunFn = Callable[..., tuple[ExecutionResult, RecordingSink]]


@pytest.fixture
def run() -> RunFn:
    """Validate ``config`` like the core does, then execute it; returns (result, sink)."""
    executor = HttpExecutor()

    def _run(config: dict[str, str], cancel: CancelToken | None = None) -> tuple[ExecutionResult, RecordingSink]:
        sink = RecordingSink()
        request = ExecutionRequest(job_name="job1", run_id="run-1", config=executor.validate(config))
        return executor.execute(request, sink, cancel or CancelToken()), sink

    return _run


# -- the server ----------------------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_cert: dict[str, Any] | None = None

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # any method, including PURGE and friends
            return self._handle
        raise AttributeError(name)

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        seen = Seen(self.command, self.path, list(self.headers.items()), body, peer)
        self.server.seen.append(seen)
        route = url.path.strip("/").split("/")
        if route[0] == "echo":
            payload = {"method": seen.method, "path": seen.path, "headers": seen.headers, "body": body.decode()}
            self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        elif route[0] == "status":
            code = int(route[1])
            self._send(code, f"status {code}".encode())
        elif route[0] == "slow":  # headers only after a delay
            time.sleep(float(query.get("delay", "5")))
            self._send(200, b"finally")
        elif route[0] == "trickle":  # chunked body, one chunk every `delay` seconds
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for i in range(int(query.get("chunks", "50"))):
                    data = f"chunk {i}\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                    time.sleep(float(query.get("delay", "0.2")))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
        elif route[0] == "big":
            self._send(200, b"x" * int(query["size"]))
        elif route[0] == "short":  # promises 100 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
        elif route[0] == "loop":
            self._send(302, b"again", {"Location": "/loop"})
        elif route[0] == "redirect":
            self._send(int(query.get("code", "302")), b"moved", {"Location": query["to"]})
        else:
            self._send(404, b"no such route")


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # concurrent tests must not hit SYN retransmits

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self.seen: list[Seen] = []
        super().__init__(("127.0.0.1", 0), Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        if self.context is not None:
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate (or sent none): nothing to serve
        with contextlib.suppress(ssl.SSLError, OSError):
            super().finish_request(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "/echo", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.context else "http"
        return f"{scheme}://{host}:{self.port}{path}"


def _serve(server: LocalServer) -> Iterator[LocalServer]:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    yield from _serve(LocalServer())


# -- TLS material --------------------------------------------------------------------------------
@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_files: dict[str, Path] = field(default_factory=dict)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: Any, issuer: x509.Name | None, issuer_key: Any, *, ca: bool, usage: Any = None) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: Any = None, key: Any = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("dkron test CA", ca_key, None, ca_key, ca=True)
    server_key, client_key = _key(), _key()
    server = _cert("localhost", server_key, ca.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _cert("dkron-agent", client_key, ca.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=_write(d / "ca.pem", ca),
        server_cert=_write(d / "server.pem", server),
        server_key=_write(d / "server.key", key=server_key),
        client_cert=_write(d / "client.pem", client),
        client_key=_write(d / "client.key", key=client_key),
    )


def _server_context(pki: Pki, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    return context


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[LocalServer]:
    yield from _serve(LocalServer(_server_context(pki, require_client_cert=False)))


@pytest.fixture
def mtls_server(pki: Pki) -> Iterator[LocalServer]:
    yield from _serve(LocalServer(_server_context(pki, require_client_cert=True)))
