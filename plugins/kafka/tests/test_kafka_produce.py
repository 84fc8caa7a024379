"""KafkaExecutor.execute against a real Tansu broker; every success is read back with a Consumer."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_support import Broker, RecordingSink, RunFn, consume_one, java_partition, reported

from dkron.contracts import CancelToken
from dkron.testing import free_port


def test_keyed_message_is_acknowledged_and_read_back(run: RunFn, broker: Broker) -> None:
    config = {"brokerAddress": broker.address, "topic": "orders", "key": "order-1", "message": "hello from dkron"}
    result, sink = run(config)
    assert (result.success, result.error) == (True, "")
    where = reported(sink)
    assert sink.text == (
        f'produced 16 bytes with key "order-1" to topic orders, partition {where.partition}, offset {where.offset}\n'
    )
    assert consume_one(broker.address, where) == (b"order-1", b"hello from dkron")
    again, sink2 = run({**config, "message": "second"})
    assert again.success
    second = reported(sink2)
    assert (second.partition, second.offset) == (where.partition, where.offset + 1)  # same key, same partition
    assert consume_one(broker.address, second) == (b"order-1", b"second")


def test_no_key_and_empty_message(run: RunFn, broker: Broker) -> None:
    result, sink = run({"brokerAddress": broker.address, "topic": "empty"})
    assert result.success, result.error
    where = reported(sink)
    assert sink.text.startswith("produced 0 bytes without key to topic empty, partition ")
    assert consume_one(broker.address, where) == (None, b"")


def test_keys_land_where_java_would_put_them(run: RunFn, broker: Broker) -> None:
    admin = AdminClient({"bootstrap.servers": broker.address})
    for future in admin.create_topics([NewTopic("three", num_partitions=3, replication_factor=1)]).values():
        future.result(10)
    for key in ("a", "b", "c", "order-1", "order-2", "ünïcode"):
        result, sink = run({"brokerAddress": broker.address, "topic": "three", "key": key, "message": key})
        assert result.success, result.error
        where = reported(sink)
        assert where.partition == java_partition(key.encode(), 3), key
        assert consume_one(broker.address, where) == (key.encode(), key.encode())


def test_debug_shows_config_and_client_log_but_no_password(run: RunFn, broker: Broker) -> None:
    config = {"brokerAddress": broker.address, "topic": "dbg", "message": "m", "debug": "true"}
    result, sink = run(config)
    assert result.success, result.error
    assert sink.text.startswith(f"kafka: brokers={broker.address} topic=dbg key=none bytes=1 security=plaintext")
    assert "kafka: " in sink.text.splitlines()[1]  # librdkafka's own debug lines follow
    assert sink.text.endswith("\n") and reported(sink).topic == "dbg"


def test_next_broker_is_used_when_the_first_is_down(run: RunFn, broker: Broker) -> None:
    addresses = f"127.0.0.1:{free_port()},{broker.address}"
    result, sink = run({"brokerAddress": addresses, "topic": "failover", "message": "x"})
    assert result.success, result.error
    assert consume_one(broker.address, reported(sink)) == (None, b"x")


def test_broker_down_fails_quickly_with_a_clear_error(run: RunFn) -> None:
    address = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    result, sink = run({"brokerAddress": address, "topic": "t", "message": "x"})
    assert time.monotonic() - began < 2
    assert not result.success and sink.text == ""
    assert result.error.startswith(f"kafka: all brokers are down: {address}/bootstrap: Connect to ")
    assert "Connection refused" in result.error


def test_sasl_rejected_by_the_broker(run: RunFn, auth_broker: Broker) -> None:
    config = {
        "brokerAddress": auth_broker.address,
        "topic": "t",
        "saslUsername": "nobody",
        "saslPassword": "wrong",
        "saslMechanism": "sha256",
    }
    began = time.monotonic()
    result, _ = run(config)
    assert time.monotonic() - began < 3
    assert result.error.startswith("kafka: authentication failed: ")
    assert "SASL SCRAM authentication failed" in result.error
    result, sink = run({**config, "saslMechanism": "sha512", "saslPassword": "pw-S3cr3t-value", "debug": "true"})
    assert result.error.startswith("kafka: authentication failed: ")
    assert "SCRAM-SHA-512" in sink.text and "pw-S3cr3t-value" not in sink.text + result.error


def test_no_credentials_for_a_broker_that_requires_them(run: RunFn, auth_broker: Broker) -> None:
    began = time.monotonic()
    result, _ = run({"brokerAddress": auth_broker.address, "topic": "t", "timeout": "5s"})
    assert time.monotonic() - began < 3
    assert result.error.startswith("kafka: all brokers are down: ")
    assert "Disconnected" in result.error


def test_tls_with_a_private_ca(run: RunFn, tls_broker) -> None:
    ca = str(tls_broker.ca_file)
    config = {"brokerAddress": tls_broker.address, "topic": "secure", "key": "k", "message": "over tls"}
    result, sink = run({**config, "tlsEnable": "true", "tlsRootCAsFile": ca})
    assert result.success, result.error
    assert consume_one(tls_broker.address, reported(sink), **tls_broker.consumer_conf()) == (b"k", b"over tls")
    result, sink = run({**config, "tlsEnable": "true", "tlsInsecureSkipVerify": "true"})
    assert result.success, result.error
    assert consume_one(tls_broker.address, reported(sink), **tls_broker.consumer_conf()) == (b"k", b"over tls")


def test_tls_certificate_not_trusted(run: RunFn, tls_broker) -> None:
    began = time.monotonic()
    result, _ = run({"brokerAddress": tls_broker.address, "topic": "secure", "tlsEnable": "true", "timeout": "5"})
    assert time.monotonic() - began < 3
    assert not result.success
    assert result.error.startswith("kafka: TLS error: "), result.error
    assert "certificate verify failed" in result.error
    began = time.monotonic()
    result, _ = run({"brokerAddress": tls_broker.address, "topic": "secure", "timeout": "5"})  # TLS not enabled
    assert time.monotonic() - began < 3
    assert result.error.startswith("kafka: all brokers are down: "), result.error


def test_missing_ca_file(run: RunFn, broker: Broker) -> None:
    config = {"brokerAddress": broker.address, "topic": "t", "tlsEnable": "true", "tlsRootCAsFile": "/nonexistent/ca"}
    result, _ = run(config)
    assert result.error == "kafka: cannot read tlsRootCAsFile /nonexistent/ca: No such file or directory"


# -- timeouts and cancellation, with a real broker frozen by SIGSTOP ---------------------------------


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


@pytest.fixture
def frozen_broker(broker_factory: Callable[..., Broker]) -> Iterator[Broker]:
    broker = broker_factory()
    _freeze(broker.pid)  # the kernel still accepts TCP connections; nothing answers
    yield broker
    broker.stop()


def test_timeout_when_the_broker_does_not_answer(run: RunFn, frozen_broker: Broker) -> None:
    began = time.monotonic()
    result, _ = run({"brokerAddress": frozen_broker.address, "topic": "t", "message": "x", "timeout": "1s"})
    elapsed = time.monotonic() - began
    assert 0.9 < elapsed < 3.5
    assert result.error.startswith("kafka: timeout 1s exceeded before the broker acknowledged the message")


def test_cancel_while_waiting_for_the_acknowledgement(run: RunFn, frozen_broker: Broker) -> None:
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel, args=("killed by user",)).start()
    began = time.monotonic()
    result, _ = run({"brokerAddress": frozen_broker.address, "topic": "t", "message": "x"}, cancel=cancel)
    assert time.monotonic() - began < 3  # the timeout is the default 30 s
    assert result.error == "kafka: killed before the broker acknowledged the message: killed by user"


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))  # librdkafka's threads are not Python threads


def test_cancel_mid_run_leaves_no_thread_behind(run: RunFn, broker_factory: Callable[..., Broker]) -> None:
    """Freeze the broker once the client logged its first line, then cancel: librdkafka's threads are gone."""
    broker = broker_factory()
    cancel = CancelToken()
    frozen = threading.Event()

    def on_write(text: str) -> None:
        if not frozen.is_set():
            frozen.set()
            _freeze(broker.pid)
            threading.Timer(0.2, cancel.cancel, args=("stop",)).start()

    before = _os_threads()
    config = {"brokerAddress": broker.address, "topic": "t", "message": "x", "debug": "true"}
    result, _ = run(config, cancel=cancel, sink=RecordingSink(on_write))
    broker.stop()
    assert frozen.is_set()
    assert result.error == "kafka: killed before the broker acknowledged the message: stop"
    deadline = time.monotonic() + 2
    while _os_threads() > before and time.monotonic() < deadline:  # the Timer thread may be finishing
        time.sleep(0.05)
    assert _os_threads() <= before
