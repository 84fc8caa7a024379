"""Real requests to a local server through HttpExecutor.execute: what a job's owner sees."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dkron.contracts import CancelToken
from dkron.testing import free_port
from dkron_executor_http.executor import MAX_BODY

#: Fixtures from conftest.py: run(config, cancel=None) -> (result, sink); server is a LocalServer.
RunFn = Callable[..., Any]
LocalServer = Any


def _echo(body: str) -> dict:
    return json.loads(body.split("\n", 1)[1])


def test_get_outputs_the_status_line_then_the_body(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "GET", "url": server.url("/status/200")})
    assert (result.success, result.error, result.exit_code) == (True, "", None)
    assert sink.text == "HTTP/1.1 200 OK\nstatus 200"


def test_method_body_and_headers_reach_the_server(run: RunFn, server: LocalServer) -> None:
    headers = '["X-Time: 12:30:00", "X-Url: http://a:b@c/", "Content-Type: text/plain", "X-Dup: 1", "X-Dup: 2"]'
    result, _ = run({"method": "post", "url": server.url("/echo?a=1"), "body": "héllo", "headers": headers})
    assert result.success
    [seen] = server.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/echo?a=1", "héllo".encode())
    assert seen.header("X-Time") == "12:30:00"
    assert seen.header("X-Url") == "http://a:b@c/"
    assert seen.header("Content-Type") == "text/plain"
    assert seen.header("Content-Length") == "6"
    assert [v for k, v in seen.headers if k == "X-Dup"] == ["1", "2"]
    assert seen.header("Host") == f"127.0.0.1:{server.port}"
    assert seen.header("Connection") == "close"


def test_headers_as_json_object_and_custom_method(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "PURGE", "url": server.url(), "headers": '{"X-Api-Key": "k:1"}'})
    assert result.success
    echo = _echo(sink.text)
    assert echo["method"] == "PURGE"
    assert ["X-Api-Key", "k:1"] in echo["headers"]


def test_put_without_body_sends_content_length_zero(run: RunFn, server: LocalServer) -> None:
    assert run({"method": "PUT", "url": server.url()})[0].success
    assert server.seen[0].header("Content-Length") == "0"
    assert run({"method": "GET", "url": server.url()})[0].success
    assert server.seen[1].header("Content-Length") is None


def test_head_has_no_body(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "HEAD", "url": server.url("/status/200")})
    assert result.success
    assert sink.text == "HTTP/1.1 200 OK\n"


def test_without_expect_code_only_2xx_succeeds(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "GET", "url": server.url("/status/500")})
    assert not result.success
    assert result.error == "http: unexpected status 500 Internal Server Error (expected 2xx)"
    assert sink.text == "HTTP/1.1 500 Internal Server Error\nstatus 500"
    assert not run({"method": "GET", "url": server.url("/status/404")})[0].success
    assert run({"method": "GET", "url": server.url("/status/204")})[0].success


def test_expect_code_is_an_exact_match(run: RunFn, server: LocalServer) -> None:
    result, _ = run({"method": "GET", "url": server.url("/status/200"), "expectCode": "201,204"})
    assert result.error == "http: unexpected status 200 OK (expected one of 201, 204)"
    assert run({"method": "GET", "url": server.url("/status/200"), "expectCode": "204, 200"})[0].success
    assert run({"method": "GET", "url": server.url("/status/500"), "expectCode": "500"})[0].success
    # Dkron's substring test would accept 200 for "2000,..." style lists; here "201" never matches 200.
    assert not run({"method": "GET", "url": server.url("/status/200"), "expectCode": "201"})[0].success


def test_expect_body_is_a_regex_search(run: RunFn, server: LocalServer) -> None:
    config = {"method": "POST", "url": server.url(), "body": "ping"}
    assert run({**config, "expectBody": r'"body": "p\w+g"'})[0].success
    result, _ = run({**config, "expectBody": "^pong$"})
    assert result.error == "http: response body does not match expectBody '^pong$'"
    # both checks apply: the status first
    result, _ = run({"method": "GET", "url": server.url("/status/503"), "expectBody": "status"})
    assert result.error.startswith("http: unexpected status 503")


def test_timeout_on_slow_headers(run: RunFn, server: LocalServer) -> None:
    started = time.monotonic()
    result, _ = run({"method": "GET", "url": server.url("/slow?delay=5"), "timeout": "500ms"})
    assert time.monotonic() - started < 1.5
    assert result.error == "http: timed out after 500ms (waiting for the response)"


def test_timeout_covers_the_whole_body(run: RunFn, server: LocalServer) -> None:
    # Every chunk arrives well within the timeout, but the whole body does not.
    started = time.monotonic()
    result, sink = run({"method": "GET", "url": server.url("/trickle?chunks=50&delay=0.1"), "timeout": "1"})
    assert 0.9 < time.monotonic() - started < 2.0
    assert result.error == "http: timed out after 1s (reading the response body)"
    assert sink.text.startswith("HTTP/1.1 200 OK\nchunk 0\nchunk 1\n")


def test_chunked_body_is_streamed(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "GET", "url": server.url("/trickle?chunks=3&delay=0.05")})
    assert result.success
    assert sink.text == "HTTP/1.1 200 OK\nchunk 0\nchunk 1\nchunk 2\n"
    assert len(sink.chunks) >= 4  # status line + one write per chunk, not one big write


def test_cancel_mid_body_stops_promptly(run: RunFn, server: LocalServer) -> None:
    cancel = CancelToken()
    threading.Timer(0.5, cancel.cancel, args=("killed via API",)).start()
    started = time.monotonic()
    result, sink = run({"method": "GET", "url": server.url("/trickle?chunks=100&delay=0.1")}, cancel=cancel)
    assert time.monotonic() - started < 1.0
    assert result.error == "http: killed: killed via API"
    assert sink.text.startswith("HTTP/1.1 200 OK\nchunk 0\n")
    assert "chunk 9" not in sink.text


def test_cancel_while_waiting_for_headers(run: RunFn, server: LocalServer) -> None:
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel, args=("agent shutting down",)).start()
    started = time.monotonic()
    result, sink = run({"method": "GET", "url": server.url("/slow?delay=5")}, cancel=cancel)
    assert time.monotonic() - started < 0.8
    assert (result.error, sink.text) == ("http: killed: agent shutting down", "")


def test_already_cancelled_sends_nothing(run: RunFn, server: LocalServer) -> None:
    cancel = CancelToken()
    cancel.cancel("stopping")
    result, _ = run({"method": "GET", "url": server.url()}, cancel=cancel)
    assert result.error == "http: killed: stopping"
    assert server.seen == []


def test_large_body_is_capped(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "GET", "url": server.url(f"/big?size={MAX_BODY + 500_000}"), "expectBody": "x$"})
    assert result.success
    body = sink.data.split(b"\n", 1)[1]
    assert body.startswith(b"x" * MAX_BODY + b"\n[http: response body truncated")
    assert body.count(b"x") == MAX_BODY
    exact, sink = run({"method": "GET", "url": server.url(f"/big?size={MAX_BODY}")})
    assert exact.success and b"truncated" not in sink.data


def test_body_cut_short_fails(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "GET", "url": server.url("/short")})
    assert result.error == "http: connection closed before the end of the response body (90 bytes missing)"
    assert sink.text == "HTTP/1.1 200 OK\n0123456789"


def test_connection_refused(run: RunFn) -> None:
    port = free_port()
    result, sink = run({"method": "GET", "url": f"http://127.0.0.1:{port}/"})
    assert result.error == f"http: cannot connect to 127.0.0.1:{port}: connection refused"
    assert sink.text == ""


def test_unknown_host(run: RunFn) -> None:
    result, _ = run({"method": "GET", "url": "http://no-such-host.invalid/", "timeout": "5s"})
    assert result.error.startswith("http: cannot resolve host 'no-such-host.invalid': ")


def test_not_an_http_server(run: RunFn) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def reply() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        conn.close()

    threading.Thread(target=reply, daemon=True).start()
    result, _ = run({"method": "GET", "url": f"http://127.0.0.1:{listener.getsockname()[1]}/"})
    listener.close()
    assert result.error.startswith("http: invalid response (waiting for the response): BadStatusLine")
    assert "\n" not in result.error


def test_debug_shows_the_request_with_credentials_redacted(run: RunFn, server: LocalServer) -> None:
    url = server.url("/status/200").replace("http://", "http://ada:s3cret@")
    headers = '["Authorization: Bearer top-secret", "Proxy-Authorization: Basic cXE=", "X-Trace: 1"]'
    result, sink = run({"method": "POST", "url": url, "headers": headers, "body": "b", "debug": "true"})
    assert result.success
    request, response = sink.text.split("\n>\n", 1)
    assert request.splitlines() == [
        "> POST /status/200 HTTP/1.1",
        f"> Host: 127.0.0.1:{server.port}",
        "> Authorization: <redacted>",
        "> Proxy-Authorization: <redacted>",
        "> X-Trace: 1",
        "> User-Agent: dkron-executor-http/0.1",
        "> Content-Length: 1",
        "> Connection: close",
    ]
    assert response.startswith("HTTP/1.1 200 OK\n< Server: ")
    assert response.endswith("\n< Content-Length: 10\n<\nstatus 200")  # headers end, then the body
    assert "top-secret" not in sink.text and "cXE=" not in sink.text and "s3cret" not in sink.text
    assert server.seen[0].header("Authorization") == "Bearer top-secret"  # sent, just not shown


def test_url_user_info_becomes_basic_auth(run: RunFn, server: LocalServer) -> None:
    url = server.url("/echo").replace("http://", "http://ada:p%40ss@")
    result, sink = run({"method": "GET", "url": url, "debug": "true"})
    assert result.success
    assert server.seen[0].header("Authorization") == "Basic YWRhOnBAc3M="  # ada:p@ss
    assert "> Authorization: <redacted>" in sink.text


def test_redirects_are_followed(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "POST", "url": server.url("/redirect?to=/echo&code=303"), "body": "x"})
    assert result.success
    assert _echo(sink.text)["method"] == "GET"  # 303: GET without the body
    assert [s.method for s in server.seen] == ["POST", "GET"]
    assert server.seen[1].body == b""
    result, sink = run({"method": "POST", "url": server.url("/redirect?to=/echo&code=307"), "body": "x"})
    assert result.success
    assert (_echo(sink.text)["method"], _echo(sink.text)["body"]) == ("POST", "x")


def test_redirect_to_another_host_drops_credentials(run: RunFn, server: LocalServer) -> None:
    other = server.url("/echo", host="localhost")
    headers = f'["Authorization: Bearer t", "Cookie: a=b", "X-Keep: yes", "Host: 127.0.0.1:{server.port}"]'
    result, _ = run({"method": "GET", "url": server.url(f"/redirect?to={other}"), "headers": headers})
    assert result.success
    first, second = server.seen
    assert first.header("Authorization") == "Bearer t"
    assert (second.header("Authorization"), second.header("Cookie"), second.header("X-Keep")) == (None, None, "yes")
    assert second.header("Host") == f"localhost:{server.port}"  # a hand-set Host does not follow


def test_redirect_listed_in_expect_code_is_not_followed(run: RunFn, server: LocalServer) -> None:
    result, sink = run({"method": "GET", "url": server.url("/redirect?to=/echo&code=301"), "expectCode": "301"})
    assert result.success
    assert sink.text == "HTTP/1.1 301 Moved Permanently\nmoved"
    assert len(server.seen) == 1


def test_redirect_loop_stops(run: RunFn, server: LocalServer) -> None:
    result, _ = run({"method": "GET", "url": server.url("/loop")})
    assert result.error == "http: stopped after 10 redirects"
    assert len(server.seen) == 10


def test_redirect_to_unsupported_scheme_fails(run: RunFn, server: LocalServer) -> None:
    result, _ = run({"method": "GET", "url": server.url("/redirect?to=ftp://example.com/x")})
    assert result.error.startswith("http: cannot follow the redirect to ftp://example.com/x: url must start with")


def test_concurrent_executions(run: RunFn, server: LocalServer) -> None:
    results: dict[int, str] = {}

    def one(i: int) -> None:
        result, sink = run({"method": "POST", "url": server.url(), "body": f"n{i}"})
        assert result.success
        results[i] = _echo(sink.text)["body"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"n{i}" for i in range(16)}
