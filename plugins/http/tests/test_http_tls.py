"""HTTPS against local servers using a throwaway CA: verification, custom roots, client certificates."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dkron.contracts import CancelToken

#: Fixtures from conftest.py (run, tls_server, mtls_server, pki).
RunFn = Callable[..., Any]


def test_unknown_ca_fails_verification(run: RunFn, tls_server: Any) -> None:
    result, sink = run({"method": "GET", "url": tls_server.url("/status/200")})
    assert not result.success
    assert result.error == (
        f"http: TLS handshake with 127.0.0.1:{tls_server.port} failed: unable to get local issuer certificate"
    )
    assert sink.text == ""
    assert tls_server.seen == []  # nothing was sent


def test_root_cas_file_makes_it_trusted(run: RunFn, tls_server: Any, pki: Any) -> None:
    for host in ("127.0.0.1", "localhost"):  # IP and DNS subject alternative names
        result, sink = run({"method": "GET", "url": tls_server.url("/status/200", host), "tlsRootCAsFile": str(pki.ca)})
        assert (result.success, result.error) == (True, "")
        assert sink.text == "HTTP/1.1 200 OK\nstatus 200"


def test_no_verify_peer_skips_verification(run: RunFn, tls_server: Any) -> None:
    result, _ = run({"method": "POST", "url": tls_server.url(), "body": "hi", "tlsNoVerifyPeer": "true"})
    assert result.success
    assert tls_server.seen[0].body == b"hi"


def test_bad_root_cas_file_fails_the_run(run: RunFn, tls_server: Any, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result, _ = run({"method": "GET", "url": tls_server.url(), "tlsRootCAsFile": str(missing)})
    assert result.error == f"http: cannot load tlsRootCAsFile {missing}: no such file or directory"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result, _ = run({"method": "GET", "url": tls_server.url(), "tlsRootCAsFile": str(garbage)})
    assert result.error.startswith(f"http: cannot load tlsRootCAsFile {garbage}: ")


def test_server_requiring_a_client_cert_refuses_us_without_one(run: RunFn, mtls_server: Any, pki: Any) -> None:
    result, _ = run({"method": "GET", "url": mtls_server.url(), "tlsRootCAsFile": str(pki.ca)})
    assert not result.success
    assert result.error.startswith("http: TLS ")  # handshake failure or TLS 1.3 "certificate required" alert
    assert "certificate" in result.error  # and the hint names tlsCertificateFile
    assert mtls_server.seen == []


def test_client_certificate(run: RunFn, mtls_server: Any, pki: Any) -> None:
    config = {
        "method": "GET",
        "url": mtls_server.url("/status/200"),
        "tlsRootCAsFile": str(pki.ca),
        "tlsCertificateFile": str(pki.client_cert),
        "tlsCertificateKeyFile": str(pki.client_key),
    }
    result, sink = run(config)
    assert (result.success, sink.text) == (True, "HTTP/1.1 200 OK\nstatus 200")
    [seen] = mtls_server.seen
    assert dict(x[0] for x in seen.client_cert["subject"])["commonName"] == "dkron-agent"


def test_mismatched_client_key_fails_the_run(run: RunFn, mtls_server: Any, pki: Any) -> None:
    config = {
        "method": "GET",
        "url": mtls_server.url(),
        "tlsRootCAsFile": str(pki.ca),
        "tlsCertificateFile": str(pki.client_cert),
        "tlsCertificateKeyFile": str(pki.server_key),
    }
    result, _ = run(config)
    assert result.error.startswith(
        f"http: cannot load the client certificate (tlsCertificateFile {pki.client_cert}, "
        f"tlsCertificateKeyFile {pki.server_key}): "
    )


def test_cancel_during_a_stalled_tls_handshake(run: RunFn) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks TLS
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel, args=("killed via API",)).start()
    started = time.monotonic()
    result, _ = run({"method": "GET", "url": f"https://127.0.0.1:{listener.getsockname()[1]}/"}, cancel=cancel)
    assert time.monotonic() - started < 0.8
    assert result.error == "http: killed: killed via API"
    result, _ = run({"method": "GET", "url": f"https://127.0.0.1:{listener.getsockname()[1]}/", "timeout": "300ms"})
    port = listener.getsockname()[1]
    assert result.error == f"http: timed out after 300ms (in the TLS handshake with 127.0.0.1:{port})"
    listener.close()
