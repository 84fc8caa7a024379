"""Fixtures: real nats-server processes on 127.0.0.1 (free ports), and the executor to run against them.

The servers are session-scoped (each starts in about 20 ms) and are stopped by process group in
teardown. The subscriber is nats-py, an independent client, so a message counts as published only
if a real subscriber received it. Helpers live in ``nats_support.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats_support import ConsumeFn, NatsServer, RecordingSink, RunFn, TlsSetup, run_and_consume, start_nats_server

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult
from dkron_executor_nats import NatsExecutor


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., NatsServer]]:
    started: list[NatsServer] = []
    tmp = tmp_path_factory.mktemp("nats")

    def make(*args: str) -> NatsServer:
        server = start_nats_server(tmp, *args)
        started.append(server)
        return server

    make.tmp = tmp  # type: ignore[attr-defined]
    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(server_factory: Callable[..., NatsServer]) -> NatsServer:
    return server_factory()


@pytest.fixture(scope="session")
def userpass_server(server_factory: Callable[..., NatsServer]) -> NatsServer:
    return server_factory("--user", "alice", "--pass", "s3cret")


@pytest.fixture(scope="session")
def token_server(server_factory: Callable[..., NatsServer]) -> NatsServer:
    return server_factory("--auth", "t0ken")


@pytest.fixture(scope="session")
def restricted_server(server_factory: Callable[..., NatsServer]) -> NatsServer:
    """Users with publish permissions, and a small max_payload."""
    conf = server_factory.tmp / "restricted.conf"  # type: ignore[attr-defined]
    conf.write_text(
        "max_payload: 1024\n"
        "authorization {\n"
        '  users = [{user: "pub", password: "pw", permissions: {publish: "allowed.>", subscribe: ">"}}]\n'
        "}\n"
    )
    return server_factory("-c", str(conf))


@pytest.fixture(scope="session")
def tls_server(server_factory: Callable[..., NatsServer]) -> TlsSetup:
    trustme = pytest.importorskip("trustme", reason="trustme (test dependency) is not installed")
    tmp: Path = server_factory.tmp  # type: ignore[attr-defined]
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "server.key"))
    server = server_factory("--tls", "--tlscert", str(tmp / "server.pem"), "--tlskey", str(tmp / "server.key"))
    context = ssl.create_default_context(cafile=str(tmp / "ca.pem"))
    return TlsSetup(server, tmp / "ca.pem", context)


@pytest.fixture
def run() -> RunFn:
    """run(config, cancel=None, sink=None) -> (result, sink): validate like the core, then execute."""
    executor = NatsExecutor()

    def _run(
        config: dict[str, str], cancel: CancelToken | None = None, sink: RecordingSink | None = None
    ) -> tuple[ExecutionResult, RecordingSink]:
        sink = sink or RecordingSink()
        request = ExecutionRequest(job_name="job1", run_id="run-1", config=executor.validate(config))
        return executor.execute(request, sink, cancel or CancelToken()), sink

    return _run


@pytest.fixture
def consume(run: RunFn) -> ConsumeFn:
    """consume(config, subscribe_url, subject, **nats_connect_kwargs) -> (result, sink, payloads)."""
    return lambda config, url, subject, **connect: run_and_consume(run, config, url, subject, **connect)
