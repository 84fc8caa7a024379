"""The syslog processor against real UDP, TCP and local-socket syslog receivers on this host."""

from __future__ import annotations

import logging
import os
import re
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dkron.contracts import ConfigError
from dkron.testing import free_port
from dkron_processor_syslog import SyslogProcessor
from dkron_processor_syslog.transport import MAX_MESSAGE_BYTES, fit, parse_address

# <PRI>TIMESTAMP HOSTNAME TAG[PID]: MESSAGE   (network form, as Go's log/syslog writes it)
NETWORK = re.compile(rb"<(\d+)>(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d) (\S+) ([^\[ ]+)\[(\d+)\]: (.*)\Z", re.S)
# <PRI>Mmm dd hh:mm:ss TAG[PID]: MESSAGE     (local form)
LOCAL = re.compile(rb"<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ([^\[ ]+)\[(\d+)\]: (.*)\Z", re.S)

CRON = 9  # facility code


class Receiver:
    """A syslog receiver on 127.0.0.1 (``udp`` or ``tcp`` with octet-counting framing)."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.messages: list[bytes] = []
        received = self.messages

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                received.append(self.request[0])

        class Tcp(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    length = b""
                    while (char := self.rfile.read(1)) not in (b" ", b""):
                        length += char
                    if not length:
                        return
                    received.append(self.rfile.read(int(length)))

        if scheme == "udp":
            self.server: socketserver.BaseServer = socketserver.UDPServer(("127.0.0.1", 0), Udp)
        else:
            self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tcp)
            self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.messages) >= count, f"got {len(self.messages)} message(s), wanted {count}"
        return self.messages

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["udp", "tcp"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    rx = Receiver(request.param)
    yield rx
    rx.close()


@pytest.fixture
def udp() -> Iterator[Receiver]:
    rx = Receiver("udp")
    yield rx
    rx.close()


def execution(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "1700000000000-node1",
        "job_name": "backup",
        "run_id": "backup@1700000000000",
        "status": "success",
        "success": True,
        "output": "line 1\nline 2\n",
        "node_name": "node1",
        **overrides,
    }


def parse(message: bytes) -> tuple[int, str, bytes]:
    """(priority, tag, text) of a network-form message."""
    match = NETWORK.match(message)
    assert match, message[:200]
    assert match.group(3) == socket.gethostname().encode()
    assert int(match.group(5)) == os.getpid()
    return int(match.group(1)), match.group(4).decode(), match.group(6)


def test_success_is_sent_with_cron_info_and_output_replaced(receiver: Receiver) -> None:
    record = execution()
    result = SyslogProcessor().process(record, {"address": receiver.address})
    assert result == {**record, "output": "Output in syslog"}
    assert record["output"] == "line 1\nline 2\n"  # the caller's record is not mutated
    [message] = receiver.wait()
    priority, tag, text = parse(message)
    assert priority == CRON * 8 + 6  # <78>: facility cron, severity info
    assert tag == "dkron"
    assert text == b"job=backup execution=1700000000000-node1 success=true\nline 1\nline 2"


def test_failure_is_a_warning_with_chosen_facility_and_tag(receiver: Receiver) -> None:
    config = {"address": receiver.address, "facility": "LOCAL3", "tag": "nightly-jobs", "forward": "true"}
    config = SyslogProcessor().validate(config)
    record = execution(success=False, status="failed", output="exit status 1\nboom")
    assert SyslogProcessor().process(record, config) == record  # forward keeps the output
    priority, tag, text = parse(receiver.wait()[0])
    assert priority == 19 * 8 + 4  # local3.warning
    assert tag == "nightly-jobs"
    assert text.endswith(b"success=false\nexit status 1\nboom")


def test_local_socket() -> None:
    directory = tempfile.mkdtemp(prefix="dkron-syslog-")  # short: AF_UNIX paths are limited to 107 bytes
    path = os.path.join(directory, "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        SyslogProcessor().process(execution(output="héllo\n"), {"address": path})
        message = sock.recv(65536)
        SyslogProcessor().process(execution(), {"address": f"unix://{path}"})
        assert LOCAL.match(sock.recv(65536))
    os.unlink(path)
    os.rmdir(directory)
    match = LOCAL.match(message)
    assert match, message
    assert int(match.group(1)) == CRON * 8 + 6 and match.group(3) == b"dkron"
    assert match.group(5).decode() == "job=backup execution=1700000000000-node1 success=true\nhéllo"


def test_big_output_is_cut_to_its_tail_within_the_limit(udp: Receiver) -> None:
    lines = [f"{i:06d} ünïcödé line" for i in range(20_000)]
    SyslogProcessor().process(execution(output="\n".join(lines)), {"address": udp.address})
    [message] = udp.wait()
    assert len(message) <= MAX_MESSAGE_BYTES
    _, _, text = parse(message)
    decoded = text.decode("utf-8")  # still valid UTF-8
    summary, marker, *kept = decoded.split("\n")
    assert summary == "job=backup execution=1700000000000-node1 success=true"
    assert re.fullmatch(r"\[\.\.\. \d+ bytes of output left out \.\.\.\]", marker)
    assert kept == lines[-len(kept) :] and len(kept) > 100  # whole lines, the last ones


def test_fit_never_splits_a_character() -> None:
    for limit in range(100, 200):
        text = fit("head\n", "€" * 500, limit)
        assert len(text.encode()) <= limit and text.endswith("€")


def test_unreachable_receiver_logs_a_warning_and_keeps_the_execution(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dkron.processor.syslog")
    record = execution()
    address = f"tcp://127.0.0.1:{free_port()}"
    assert SyslogProcessor().process(record, {"address": address}) is record
    assert SyslogProcessor().process(record, {"address": "/nonexistent/dev/log"}) is record
    first, second = caplog.records
    assert first.levelno == logging.WARNING
    assert f"could not send job backup execution 1700000000000-node1 to {address}" in first.getMessage()
    assert "/nonexistent/dev/log" in second.getMessage()


def test_a_silent_tcp_receiver_cannot_hold_the_run() -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    # Fill the accept queue so that the next connect hangs (the kernel drops its SYN).
    fillers = [socket.socket() for _ in range(3)]
    for sock in fillers:
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
    processor = SyslogProcessor()
    processor.timeout = 0.5
    began = time.monotonic()
    record = execution()
    assert processor.process(record, {"address": f"tcp://127.0.0.1:{port}"}) is record
    assert 0.4 < time.monotonic() - began < 2  # it did hang, and was cut off at the timeout
    for sock in [*fillers, server]:
        sock.close()


def test_default_address_is_the_local_syslog(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_address("").path == "/dev/log"
    if not Path("/dev/log").exists():  # no syslog daemon here: a warning, and nothing changes
        caplog.set_level(logging.WARNING, logger="dkron.processor.syslog")
        record = execution()
        assert SyslogProcessor().process(record, {}) is record
        assert "to the local syslog" in caplog.text


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"address": "localhost:514"}, "address"),
        ({"address": "http://localhost:514"}, "address"),
        ({"address": "udp://localhost:99999"}, "address"),
        ({"address": "udp://localhost:port"}, "address"),
        ({"address": "tcp://:514"}, "address"),
        ({"address": "udp://host:514/path"}, "address"),
        ({"address": "unix://relative"}, "address"),
        ({"facility": "crontab"}, "facility"),
        ({"tag": "has space"}, "tag"),
        ({"tag": "x" * 33}, "tag"),
        ({"forward": "yes"}, "forward"),
        ({"adress": "udp://localhost"}, "adress"),
    ],
)
def test_every_error_names_its_key(config: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SyslogProcessor().validate(config)
    assert info.value.key == key
    assert key in str(info.value)


def test_validate_normalises() -> None:
    config = {"forward": "T", "facility": "Local7", "address": " udp://[::1]:1514 ", "reporting_node": "n1"}
    assert SyslogProcessor().validate(config) == {
        "forward": "true",
        "facility": "local7",
        "address": "udp://[::1]:1514",
        "reporting_node": "n1",
    }
    assert str(parse_address("udp://[::1]:1514")) == "udp://[::1]:1514"
    assert str(parse_address("tcp://logs.example")) == "tcp://logs.example:514"


def test_plugin_loads_through_entry_point() -> None:
    from dkron.plugins import load_plugins

    host = load_plugins()
    assert "syslog" in host.processors
    assert host.infos["syslog"].error == ""


def test_end_to_end_through_a_real_agent(dkron_agent: Any, udp: Receiver) -> None:
    job = {
        "name": "greet",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "echo hello from the agent"},
        "processors": {"syslog": {"address": udp.address, "tag": "dkron-e2e"}},
    }
    assert dkron_agent.post("/v1/jobs", job).status == 201
    execution_id = dkron_agent.post("/v1/jobs/greet/run").json()["execution_id"]
    done = dkron_agent.wait_finished("greet", execution_id)
    assert done["status"] == "success" and done["output"] == "Output in syslog"
    [message] = udp.wait()
    match = NETWORK.match(message)
    assert match and int(match.group(1)) == CRON * 8 + 6 and match.group(4) == b"dkron-e2e"
    assert match.group(6) == f"job=greet execution={execution_id} success=true\nhello from the agent".encode()
