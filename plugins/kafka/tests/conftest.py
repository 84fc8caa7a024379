"""Fixtures: real Tansu brokers on 127.0.0.1 (free ports), and the executor to run against them.

Brokers are session-scoped (each starts in about 50 ms) and are stopped by process group in
teardown. Verification reads the message back with confluent-kafka's Consumer and ``assign()``
(no consumer group, which Tansu makes slow). Helpers live in ``kafka_support.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka_support import Broker, RecordingSink, RunFn, TlsProxy, start_tansu

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult
from dkron.testing import free_port
from dkron_executor_kafka import KafkaExecutor


@pytest.fixture(scope="session")
def broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Broker]]:
    started: list[Broker] = []
    tmp = tmp_path_factory.mktemp("tansu")

    def make(*args: str, advertised_port: int | None = None) -> Broker:
        broker = start_tansu(tmp, *args, advertised_port=advertised_port)
        started.append(broker)
        return broker

    make.tmp = tmp  # type: ignore[attr-defined]
    yield make
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


@pytest.fixture(scope="session")
def auth_broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A broker that requires SASL authentication (and knows no users)."""
    return broker_factory("--authentication")


@dataclass
class TlsSetup:
    broker: Broker
    proxy: TlsProxy
    ca_file: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def consumer_conf(self) -> dict[str, str]:
        return {"security.protocol": "SSL", "ssl.ca.location": str(self.ca_file)}


@pytest.fixture(scope="session")
def tls_broker(broker_factory: Callable[..., Broker]) -> Iterator[TlsSetup]:
    """Tansu behind a TLS-terminating proxy that it advertises, so every client connection is TLS."""
    trustme = pytest.importorskip("trustme", reason="trustme (test dependency) is not installed")
    tmp: Path = broker_factory.tmp  # type: ignore[attr-defined]
    ca = trustme.CA()
    ca_file = tmp / "kafka-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    proxy_port = free_port()
    tansu = broker_factory(advertised_port=proxy_port)
    proxy = TlsProxy(proxy_port, tansu.port, context)
    yield TlsSetup(tansu, proxy, ca_file)
    proxy.stop()


@pytest.fixture
def run() -> RunFn:
    """run(config, cancel=None, sink=None) -> (result, sink): validate like the core, then execute."""
    executor = KafkaExecutor()

    def _run(
        config: dict[str, str], cancel: CancelToken | None = None, sink: RecordingSink | None = None
    ) -> tuple[ExecutionResult, RecordingSink]:
        sink = sink or RecordingSink()
        request = ExecutionRequest(job_name="job1", run_id="run-1", config=executor.validate(config))
        return executor.execute(request, sink, cancel or CancelToken()), sink

    return _run
