"""HTTP hardening on a real agent: CORS off unless configured, header size limit, security headers."""

from __future__ import annotations

import socket

ORIGIN = "https://ops.example.com"


def test_cors_is_off_by_default(dkron_agent):
    response = dkron_agent.get("/v1/jobs", headers={"Origin": ORIGIN})
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_cors_allows_only_the_configured_origins(agent_factory):
    agent = agent_factory(extra_args=("--cors-allowed-origins", ORIGIN)).start()
    allowed = agent.get("/v1/jobs", headers={"Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in allowed.headers["Access-Control-Allow-Headers"]
    preflight = agent.request(
        "OPTIONS", "/v1/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 200 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = agent.get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_oversized_headers_are_refused(dkron_agent):
    with socket.create_connection(("127.0.0.1", dkron_agent.http_port), timeout=10) as sock:
        sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = sock.recv(4096)
    # Refused by the HTTP server before the app sees it (so a plain-text answer, no stack trace).
    assert answer.split(b"\r\n")[0].endswith(b" 431 Request Header Fields Too Large"), answer[:100]
    assert dkron_agent.get("/health").status == 200
