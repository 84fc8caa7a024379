"""Publishing against a real RabbitMQ (see conftest.py), read back with ``basic_get``."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from dkron.contracts import CancelToken
from dkron.testing import free_port

Run = Callable[..., Any]
Broker = Any  # conftest.Broker (conftest modules are not imported by name)


def fetch(broker: Broker, queue: str) -> tuple[Any, pika.BasicProperties, bytes]:
    connection = broker.connect()
    try:
        method, props, body = connection.channel().basic_get(queue, auto_ack=True)
        assert method is not None, f"no message in queue {queue!r}"
        return method, props, body
    finally:
        connection.close()


def queue_exists(broker: Broker, queue: str, **flags: bool) -> bool:
    """Whether ``queue`` exists (with these flags, when given: a mismatch is a 406)."""
    connection = broker.connect()
    try:
        connection.channel().queue_declare(queue, passive=not flags, **flags)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code in (404, 406), exc
        return False
    finally:
        connection.close()


def test_publish_with_confirm_and_read_it_back(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    result, sink = run(
        {
            "url": rabbitmq.url,
            "queue.name": queue_name,
            "queue.create": "true",
            "message.body": "héllo from dkron",
            "message.content_type": "application/x-test",
            "message.delivery_mode": "2",
            "message.messageId": "msg-42",
        },
        job_name="nightly",
        run_id="nightly@1700000000000",
        execution_id="exec-9",
    )
    assert result.success, result.error
    body = "héllo from dkron".encode()
    assert f"published {len(body)} bytes to exchange '' (the default exchange) with routing key '{queue_name}'" in (
        sink.text
    )
    assert "guest:***@127.0.0.1" in sink.text
    assert "the broker confirmed the message (publisher confirm: ack)" in sink.text
    assert f"declared queue '{queue_name}'" in sink.text
    method, props, got = fetch(rabbitmq, queue_name)
    assert got == body
    assert method.routing_key == queue_name and method.exchange == ""
    assert props.content_type == "application/x-test"
    assert props.delivery_mode == 2
    assert props.message_id == "msg-42"
    assert props.headers == {
        "x-dkron-job": "nightly",
        "x-dkron-run-id": "nightly@1700000000000",
        "x-dkron-execution-id": "exec-9",
    }


def test_defaults_and_base64_body(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    result, _ = run({"url": rabbitmq.url, "queue.name": queue_name, "queue.create": "1", "message.base64": "AAECAwT/"})
    assert result.success, result.error
    _, props, got = fetch(rabbitmq, queue_name)
    assert got == b"\x00\x01\x02\x03\x04\xff"
    assert props.content_type == "text/plain"
    assert props.delivery_mode is None and props.message_id is None


def test_transient_delivery_mode(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    result, _ = run(
        {"url": rabbitmq.url, "queue.name": queue_name, "queue.create": "true", "message.delivery_mode": "1"}
    )
    assert result.success, result.error
    assert fetch(rabbitmq, queue_name)[1].delivery_mode == 1


@pytest.mark.parametrize(("durable", "auto_delete"), [(True, False), (False, True)])
def test_queue_is_declared_with_the_flags(
    rabbitmq: Broker, run: Run, queue_name: str, durable: bool, auto_delete: bool
) -> None:
    config = {
        "url": rabbitmq.url,
        "queue.name": queue_name,
        "queue.create": "true",
        "queue.durable": str(durable).lower(),
        "queue.auto_delete": str(auto_delete).lower(),
    }
    result, sink = run(config)
    assert result.success, result.error
    assert f"durable={durable}, auto_delete={auto_delete}, exclusive=False" in sink.text
    # Re-declaring with other flags is refused (406), with the same flags accepted.
    assert not queue_exists(rabbitmq, queue_name, durable=not durable, auto_delete=auto_delete)
    assert queue_exists(rabbitmq, queue_name, durable=durable, auto_delete=auto_delete)
    # A second run finds the queue (and the first message) there.
    result, sink = run(config)
    assert result.success and "1 message(s) were waiting" in sink.text


def test_declaring_with_conflicting_flags_fails_the_run(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    assert run({"url": rabbitmq.url, "queue.name": queue_name, "queue.create": "true"})[0].success
    result, _ = run({"url": rabbitmq.url, "queue.name": queue_name, "queue.create": "true", "queue.durable": "true"})
    assert not result.success
    assert result.error.startswith("rabbitmq: the broker refused: 406 PRECONDITION_FAILED")


@pytest.mark.parametrize("create", [None, "false"])
def test_without_queue_create_nothing_is_declared_and_unroutable_fails(
    rabbitmq: Broker, run: Run, queue_name: str, create: str | None
) -> None:
    config = {"url": rabbitmq.url, "queue.name": queue_name, "message.body": "lost?"}
    if create is not None:
        config["queue.create"] = create
    result, sink = run(config)
    assert not result.success
    assert result.error == (
        f"rabbitmq: message is unroutable (312 NO_ROUTE): exchange '' has no queue bound for routing key '{queue_name}'"
    )
    assert "confirmed" not in sink.text
    assert not queue_exists(rabbitmq, queue_name)


def test_named_exchange(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    connection = rabbitmq.connect()
    channel = connection.channel()
    channel.exchange_declare(f"ex-{queue_name}", exchange_type="direct", auto_delete=False)
    channel.queue_declare(queue_name)
    channel.queue_bind(queue_name, f"ex-{queue_name}", routing_key=queue_name)
    connection.close()
    result, sink = run({"url": rabbitmq.url, "exchange": f"ex-{queue_name}", "queue.name": queue_name})
    assert result.success, result.error
    assert f"to exchange 'ex-{queue_name}' with routing key '{queue_name}'" in sink.text
    method, _, body = fetch(rabbitmq, queue_name)
    assert method.exchange == f"ex-{queue_name}" and body == b""


def test_missing_exchange_fails_the_run(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    result, _ = run({"url": rabbitmq.url, "exchange": "no-such-exchange", "queue.name": queue_name})
    assert not result.success
    assert result.error == "rabbitmq: the broker refused: 404 NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"


def test_bad_credentials_fail_fast_without_the_password(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    url = f"amqp://guest:wrong-s3cret@127.0.0.1:{rabbitmq.port}/"
    began = time.monotonic()
    result, sink = run({"url": url, "queue.name": queue_name, "queue.create": "true", "timeout": "20s"})
    assert time.monotonic() - began < 3
    assert not result.success
    assert result.error.startswith(f"rabbitmq: authentication failed at amqp://guest:***@127.0.0.1:{rabbitmq.port}/")
    assert ": 403 ACCESS_REFUSED - Login was refused" in result.error
    assert "wrong-s3cret" not in result.error + sink.text
    assert "\n" not in result.error


def test_unknown_vhost_fails(rabbitmq: Broker, run: Run, queue_name: str) -> None:
    result, _ = run({"url": f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}/nope", "queue.name": queue_name})
    assert not result.success
    assert result.error == (
        f"rabbitmq: access to the virtual host denied at amqp://guest:***@127.0.0.1:{rabbitmq.port}/nope: "
        "530 NOT_ALLOWED - vhost nope not found"
    )


def test_unknown_host_fails(run: Run) -> None:
    result, _ = run({"url": "amqp://no-such-host.invalid/", "queue.name": "q", "timeout": "5s"})
    assert not result.success
    assert result.error.startswith("rabbitmq: cannot connect to amqp://no-such-host.invalid/: ")


def test_nothing_listening_fails_fast(run: Run) -> None:
    began = time.monotonic()
    result, _ = run({"url": f"amqp://127.0.0.1:{free_port()}/", "queue.name": "q"})
    assert time.monotonic() - began < 3
    assert not result.success
    assert result.error.startswith("rabbitmq: cannot connect to amqp://127.0.0.1:")
    assert result.error.endswith("Connection refused")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never says a word (a hung broker)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


def test_hung_broker_fails_within_the_timeout(run: Run, silent_server: int) -> None:
    began = time.monotonic()
    result, _ = run({"url": f"amqp://127.0.0.1:{silent_server}/", "queue.name": "q", "timeout": "1s"})
    elapsed = time.monotonic() - began
    assert not result.success and 0.9 < elapsed < 2.5, (elapsed, result)
    assert result.error == f"rabbitmq: cannot connect to amqp://127.0.0.1:{silent_server}/: no AMQP handshake within 1s"


def test_cancel_stops_waiting_at_once(run: Run, silent_server: int) -> None:
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel, args=("killed by request",)).start()
    began = time.monotonic()
    result, _ = run({"url": f"amqp://127.0.0.1:{silent_server}/", "queue.name": "q", "timeout": "30s"}, cancel)
    assert time.monotonic() - began < 1.0
    assert result.error == "rabbitmq: killed: killed by request (nothing was published)"


def test_end_to_end_through_a_real_agent(rabbitmq: Broker, dkron_agent: Any, queue_name: str) -> None:
    job = {
        "name": "publish",
        "schedule": "@manually",
        "executor": "rabbitmq",
        "executor_config": {
            "url": rabbitmq.url,
            "queue.name": queue_name,
            "queue.create": True,
            "message.body": "from the agent",
            "message.delivery_mode": 2,
        },
    }
    bad = {**job, "executor_config": {**job["executor_config"], "message.base64Body": "Zm9v"}}
    rejected = dkron_agent.post("/v1/jobs", bad)
    assert rejected.status == 400 and "executor_config.message.base64Body" in rejected.body.decode()
    assert dkron_agent.post("/v1/jobs", job).status == 201
    execution_id = dkron_agent.post("/v1/jobs/publish/run").json()["execution_id"]
    done = dkron_agent.wait_finished("publish", execution_id)
    assert done["status"] == "success", done
    assert "publisher confirm: ack" in done["output"]
    _, props, body = fetch(rabbitmq, queue_name)
    assert body == b"from the agent" and props.delivery_mode == 2
    assert props.headers["x-dkron-execution-id"] == execution_id
