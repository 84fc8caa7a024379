"""NatsExecutor.execute against real nats-server processes; every success is consumed back with nats-py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from nats_support import ConsumeFn, NatsServer, RecordingSink, RunFn, TlsSetup

from dkron.contracts import CancelToken
from dkron.testing import free_port


def test_publish_is_received_and_reported(consume: ConsumeFn, nats_server: NatsServer) -> None:
    config = {"url": nats_server.url, "subject": "dkron.test", "message": "hello from dkron"}
    result, sink, received = consume(config, nats_server.url, "dkron.test")
    assert (result.success, result.error) == (True, "")
    assert received == [b"hello from dkron"]
    assert sink.text == f"published 16 bytes to dkron.test on {nats_server.url}\n"


def test_empty_and_multibyte_messages(consume: ConsumeFn, nats_server: NatsServer) -> None:
    result, sink, received = consume({"url": nats_server.url, "subject": "e"}, nats_server.url, "e")
    assert result.success and received == [b""]
    assert sink.text.startswith("published 0 bytes to e ")
    text = "ligne 1\r\nligne 2 € ✓"
    result, sink, received = consume({"url": nats_server.url, "subject": "u", "message": text}, nats_server.url, "u")
    assert result.success and received == [text.encode()]
    assert f"published {len(text.encode())} bytes" in sink.text


def test_debug_traces_the_steps_without_secrets(consume: ConsumeFn, userpass_server: NatsServer) -> None:
    config = {"url": userpass_server.url, "subject": "d", "userName": "alice", "password": "s3cret", "debug": "true"}
    result, sink, received = consume(config, userpass_server.url, "d", user="alice", password="s3cret")
    assert result.success and received == [b""]
    assert "nats: connected to " in sink.text and "nats: authenticated" in sink.text
    assert "s3cret" not in sink.text


def test_falls_over_to_the_next_url(consume: ConsumeFn, nats_server: NatsServer) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    result, sink, received = consume({"url": f"{dead},{nats_server.url}", "subject": "f"}, nats_server.url, "f")
    assert result.success and received == [b""]
    assert sink.text.endswith(f"on {nats_server.url}\n")


def test_server_down_fails_quickly_with_a_clear_error(run: RunFn) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    began = time.monotonic()
    result, _ = run({"url": dead, "subject": "x"})
    assert time.monotonic() - began < 2  # nothing waits for a timeout
    assert (result.success, result.error) == (False, f"nats: {dead}: cannot connect: Connection refused")
    result, _ = run({"url": f"{dead},{dead.replace('nats', 'tls')}", "subject": "x"})
    assert result.error.startswith("nats: no server accepted the connection: ")
    assert result.error.count("Connection refused") == 2


def test_user_and_password(consume: ConsumeFn, run: RunFn, userpass_server: NatsServer) -> None:
    good = {"url": userpass_server.url, "subject": "auth", "message": "m", "userName": "alice", "password": "s3cret"}
    result, _, received = consume(good, userpass_server.url, "auth", user="alice", password="s3cret")
    assert result.success and received == [b"m"]
    in_url = {"url": f"nats://alice:s3cret@127.0.0.1:{userpass_server.port}", "subject": "auth", "message": "u"}
    result, _, received = consume(in_url, userpass_server.url, "auth", user="alice", password="s3cret")
    assert result.success and received == [b"u"]

    result, _ = run({**good, "password": "wrong"})
    assert not result.success
    assert result.error == (
        f"nats: {userpass_server.url}: Authorization Violation: the server rejected the credentials"
    )
    result, _ = run({"url": userpass_server.url, "subject": "auth"})
    assert result.error == (
        f"nats: {userpass_server.url}: Authorization Violation: "
        "the server requires credentials (set userName/password or token)"
    )


def test_token(consume: ConsumeFn, run: RunFn, token_server: NatsServer) -> None:
    config = {"url": token_server.url, "subject": "tok", "message": "t", "token": "t0ken"}
    result, _, received = consume(config, token_server.url, "tok", token="t0ken")
    assert result.success and received == [b"t"]
    result, _ = run({**config, "token": "nope"})
    assert result.error.endswith("Authorization Violation: the server rejected the credentials")


def test_publish_rejected_by_the_server_fails_the_run(consume: ConsumeFn, restricted_server: NatsServer) -> None:
    """Dkron ignores publish errors; here the PING/PONG round trip surfaces them."""
    creds = {"userName": "pub", "password": "pw"}
    config = {"url": restricted_server.url, "subject": "allowed.x", "message": "ok", **creds}
    result, _, received = consume(config, restricted_server.url, ">", user="pub", password="pw")
    assert result.success and received == [b"ok"]
    result, sink, received = consume(
        {**config, "subject": "denied.x"}, restricted_server.url, ">", user="pub", password="pw"
    )
    assert not result.success and received == []
    assert result.error == (
        f'nats: publish to denied.x failed: Permissions Violation for Publish to "denied.x" ({restricted_server.url})'
    )
    assert sink.text == ""


def test_message_larger_than_max_payload(run: RunFn, restricted_server: NatsServer) -> None:
    config = {"url": restricted_server.url, "subject": "allowed.big", "userName": "pub", "password": "pw"}
    result, _ = run({**config, "message": "x" * 2000})
    assert result.error == (
        f"nats: message is 2000 bytes, more than the server's max_payload 1024 ({restricted_server.url})"
    )


def test_tls_with_a_private_ca(consume: ConsumeFn, run: RunFn, tls_server: TlsSetup) -> None:
    port = tls_server.server.port
    for url in (f"tls://127.0.0.1:{port}", f"nats://127.0.0.1:{port}"):  # nats:// upgrades when required
        config = {"url": url, "subject": "sec", "message": "over tls", "tlsRootCAsFile": str(tls_server.ca_file)}
        result, _, received = consume(config, f"tls://127.0.0.1:{port}", "sec", tls=tls_server.client_context)
        assert (result.success, result.error, received) == (True, "", [b"over tls"])
    result, _ = run({"url": f"tls://localhost:{port}", "subject": "sec"})  # system roots: not trusted
    assert result.error.startswith(f"nats: tls://localhost:{port}: TLS certificate verification failed")
    result, _ = run({"url": f"tls://127.0.0.1:{port}", "subject": "s", "tlsRootCAsFile": "/nonexistent/ca.pem"})
    assert result.error.startswith(f"nats: tls://127.0.0.1:{port}: cannot load tlsRootCAsFile /nonexistent/ca.pem")


def test_tls_asked_but_not_offered(run: RunFn, nats_server: NatsServer) -> None:
    result, _ = run({"url": f"tls://127.0.0.1:{nats_server.port}", "subject": "s"})
    assert (
        result.error == f"nats: tls://127.0.0.1:{nats_server.port}: TLS was asked for but the server does not offer it"
    )


def test_not_a_nats_server(run: RunFn) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        result, _ = run({"url": f"nats://127.0.0.1:{port}", "subject": "s"})
    assert result.error == f"nats: nats://127.0.0.1:{port}: not a NATS server (first line b'HTTP/1.1 400 Bad Request')"


# -- timeouts and cancellation, with a real server frozen by SIGSTOP at a chosen moment -------------


@pytest.fixture
def frozen_server(server_factory: Callable[..., NatsServer]) -> Iterator[NatsServer]:
    server = server_factory()
    yield server
    server.stop()  # sends SIGCONT first


def _freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it is really stopped (kill() does not wait)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/stat") as stat:
                states.append(stat.read().rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def _freeze_when(server: NatsServer, marker: str) -> RecordingSink:
    """A sink that SIGSTOPs the server once the debug output shows ``marker``."""

    def on_line(text: str) -> None:
        if marker in text:
            _freeze(server.pid)

    return RecordingSink(on_line)


def test_timeout_while_the_server_does_not_answer(run: RunFn, frozen_server: NatsServer) -> None:
    _freeze(frozen_server.pid)  # the kernel still accepts the TCP connection
    began = time.monotonic()
    result, _ = run({"url": frozen_server.url, "subject": "s", "timeout": "500ms"})
    elapsed = time.monotonic() - began
    assert 0.45 < elapsed < 3
    assert result.error.startswith(f"nats: {frozen_server.url}: no answer after 0.")
    assert result.error.endswith("s while waiting for the server's INFO")


def test_timeout_while_waiting_for_the_publish_confirmation(run: RunFn, frozen_server: NatsServer) -> None:
    sink = _freeze_when(frozen_server, "connected without credentials")
    began = time.monotonic()
    result, _ = run({"url": frozen_server.url, "subject": "s", "timeout": "0.6", "debug": "true"}, sink=sink)
    assert 0.5 < time.monotonic() - began < 3
    assert result.error == (
        f"nats: timeout 0.6s exceeded waiting for the server to confirm the publish ({frozen_server.url})"
    )


def test_cancel_while_waiting_for_the_publish_confirmation(run: RunFn, frozen_server: NatsServer) -> None:
    cancel = CancelToken()
    sink = _freeze_when(frozen_server, "connected without credentials")
    timer = threading.Timer(0.3, cancel.cancel, args=("killed by user",))
    timer.start()
    began = time.monotonic()
    result, _ = run({"url": frozen_server.url, "subject": "s", "debug": "true"}, cancel=cancel, sink=sink)
    assert time.monotonic() - began < 2  # the timeout is the default 10 s
    assert result.error == "nats: killed before the publish was confirmed: killed by user"


def test_cancel_while_connecting(run: RunFn, frozen_server: NatsServer) -> None:
    _freeze(frozen_server.pid)
    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel, args=("agent shutdown",)).start()
    began = time.monotonic()
    result, _ = run({"url": frozen_server.url, "subject": "s"}, cancel=cancel)
    assert time.monotonic() - began < 2  # the timeout is the default 10 s
    assert result.error == "nats: killed: agent shutdown"
