"""The fluent processor against a real in-test forward-protocol receiver (msgpack over TCP)."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest

from dkron.contracts import ConfigError
from dkron.testing import free_port
from dkron_processor_fluent import FluentProcessor
from dkron_processor_fluent.forward import Endpoint, parse_endpoint
from dkron_processor_fluent.processor import endpoint_from

HOST = socket.gethostname()


class Receiver:
    """Accepts forward-protocol connections on 127.0.0.1 and decodes every msgpack event."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.events: list[list[Any]] = []
        self.server.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                unpacker = msgpack.Unpacker(raw=False)
                conn.settimeout(5)
                while chunk := conn.recv(65536):
                    unpacker.feed(chunk)
                self.events.extend(unpacker)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[list[Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.events) >= count, f"got {len(self.events)} event(s), wanted {count}"
        return self.events

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.server.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    yield rx
    rx.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLUENTBIT_HOST", "FLUENTBIT_PORT", "FLUENT_PORT", "FLUENTBIT_TAG"):
        monkeypatch.delenv(name, raising=False)


def execution(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "1700000000000-node1",
        "job_name": "backup",
        "run_id": "backup@1700000000000",
        "status": "success",
        "success": True,
        "output": "line 1\nline 2\n",
        "node_name": "node1",
        "finished_at": "2024-05-06T07:08:09.250Z",
        **overrides,
    }


def decode_time(value: Any) -> float:
    assert isinstance(value, msgpack.ExtType) and value.code == 0 and len(value.data) == 8, value
    seconds, nanos = struct.unpack(">II", value.data)
    return seconds + nanos / 1e9


def test_event_is_tag_time_record_and_output_is_replaced(receiver: Receiver) -> None:
    record = execution()
    result = FluentProcessor().process(record, {"address": receiver.address})
    assert result == {**record, "output": "Output sent to Fluent"}
    assert record["output"] == "line 1\nline 2\n"  # the caller's record is not mutated
    [[tag, when, body]] = receiver.wait()
    assert tag == "dkron"
    assert decode_time(when) == datetime(2024, 5, 6, 7, 8, 9, 250000, tzinfo=UTC).timestamp()
    assert body == {
        "host": HOST,
        "job_name": "backup",
        "execution_id": "1700000000000-node1",
        "success": True,
        "message": "line 1\nline 2\n",
    }


def test_forward_keeps_output_and_tag_is_configurable(receiver: Receiver) -> None:
    record = execution(success=False, output="exit status 1\nbøøm")
    config = FluentProcessor().validate({"address": receiver.address, "tag": "dkron.jobs", "forward": "1"})
    assert FluentProcessor().process(record, config) is record
    [[tag, _, body]] = receiver.wait()
    assert tag == "dkron.jobs" and body["success"] is False and body["message"] == "exit status 1\nbøøm"


def test_missing_finish_time_uses_now(receiver: Receiver) -> None:
    before = time.time()
    FluentProcessor().process(execution(finished_at=None), {"address": receiver.address})
    assert before - 1 <= decode_time(receiver.wait()[0][1]) <= time.time() + 1


@pytest.mark.parametrize("port_variable", ["FLUENTBIT_PORT", "FLUENT_PORT"])
def test_address_and_tag_from_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, port_variable: str
) -> None:
    monkeypatch.setenv("FLUENTBIT_HOST", "127.0.0.1")
    monkeypatch.setenv(port_variable, str(receiver.port))
    monkeypatch.setenv("FLUENTBIT_TAG", "from.env")
    assert FluentProcessor().process(execution(), {})["output"] == "Output sent to Fluent"
    assert receiver.wait()[0][0] == "from.env"


def test_fluentbit_port_wins_over_fluent_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUENTBIT_PORT", "25000")
    monkeypatch.setenv("FLUENT_PORT", "26000")
    assert endpoint_from({}) == Endpoint("127.0.0.1", 25000)
    monkeypatch.delenv("FLUENTBIT_PORT")
    monkeypatch.setenv("FLUENTBIT_HOST", "::1")
    assert endpoint_from({}) == Endpoint("::1", 26000)
    assert endpoint_from({"address": "logs:1"}) == Endpoint("logs", 1)  # the job's address wins


def test_bad_environment_logs_a_warning_and_keeps_the_execution(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dkron.processor.fluent")
    monkeypatch.setenv("FLUENT_PORT", "http")
    record = execution()
    assert FluentProcessor().process(record, {}) is record
    assert "FLUENT_PORT='http'" in caplog.text


def test_unreachable_receiver_logs_a_warning_and_keeps_the_execution(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dkron.processor.fluent")
    record = execution()
    address = f"127.0.0.1:{free_port()}"
    assert FluentProcessor().process(record, {"address": address}) is record
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert f"could not send job backup execution 1700000000000-node1 to {address}" in warning.getMessage()


def test_a_silent_receiver_cannot_hold_the_run() -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    # Fill the accept queue so that the next connect hangs (the kernel drops its SYN).
    fillers = [socket.socket() for _ in range(3)]
    for sock in fillers:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    processor = FluentProcessor()
    processor.timeout = 0.5
    began = time.monotonic()
    record = execution()
    assert processor.process(record, {"address": f"127.0.0.1:{port}"}) is record
    assert 0.4 < time.monotonic() - began < 2  # it did hang, and was cut off at the timeout
    for sock in [*fillers, server]:
        sock.close()


def test_default_timeout_is_at_most_five_seconds() -> None:
    assert FluentProcessor.timeout <= 5


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"address": "localhost:http"}, "address"),
        ({"address": "localhost:0"}, "address"),
        ({"address": "localhost:70000"}, "address"),
        ({"address": ":24224"}, "address"),
        ({"address": "::1:24224"}, "address"),
        ({"address": "tcp://localhost:24224"}, "address"),
        ({"tag": "has space"}, "tag"),
        ({"forward": "yes"}, "forward"),
        ({"host": "localhost"}, "host"),
    ],
)
def test_every_error_names_its_key(config: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        FluentProcessor().validate(config)
    assert info.value.key == key
    assert key in str(info.value)


def test_validate_normalises_and_accepts_reporting_node() -> None:
    config = {"forward": "True", "address": " [::1]:24224 ", "reporting_node": "n1"}
    assert FluentProcessor().validate(config) == {"forward": "true", "address": "[::1]:24224", "reporting_node": "n1"}
    assert parse_endpoint("fluent-bit") == Endpoint("fluent-bit", 24224)
    assert str(parse_endpoint("[::1]:1")) == "[::1]:1"


def test_plugin_loads_through_entry_point() -> None:
    from dkron.plugins import load_plugins

    host = load_plugins()
    assert "fluent" in host.processors
    assert host.infos["fluent"].error == ""


def test_end_to_end_through_a_real_agent(agent_factory: Any, receiver: Receiver) -> None:
    # As in Dkron, the agent's environment says where Fluent Bit is (here with Dkron's FLUENT_PORT).
    agent = agent_factory(env={"FLUENTBIT_HOST": "127.0.0.1", "FLUENT_PORT": str(receiver.port)}).start()
    job = {
        "name": "greet",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "echo hello from the agent"},
        "processors": {"fluent": {"forward": False}},
    }
    assert agent.post("/v1/jobs", job).status == 201
    execution_id = agent.post("/v1/jobs/greet/run").json()["execution_id"]
    done = agent.wait_finished("greet", execution_id)
    assert done["status"] == "success" and done["output"] == "Output sent to Fluent"
    [[tag, _, body]] = receiver.wait()
    assert tag == "dkron"
    assert body == {
        "host": HOST,
        "job_name": "greet",
        "execution_id": execution_id,
        "success": True,
        "message": "hello from the agent\n",
    }
