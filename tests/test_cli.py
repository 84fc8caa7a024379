"""The ``dkron`` command as a user runs it: ``python -m dkron.cli ...`` in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dkron import __version__
from dkron.testing import free_port


def dkron(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30):
    return subprocess.run(
        [sys.executable, "-m", "dkron.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_version_prints_the_version_and_exits_0():
    result = dkron("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"dkron {__version__}")
    assert result.stdout.count("\n") == 1


def test_keygen_prints_a_fresh_32_byte_base64_key_each_time():
    keys = []
    for _ in range(2):
        result = dkron("keygen")
        assert result.returncode == 0, result.stderr
        key = result.stdout.strip()
        assert len(base64.b64decode(key, validate=True)) == 32
        keys.append(key)
    assert keys[0] != keys[1]


def test_no_command_prints_usage_and_fails():
    result = dkron()
    assert result.returncode != 0
    assert "usage: dkron" in result.stderr and "agent" in result.stderr


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--rpc-port", "abc"], "rpc-port"),
        (["--raft-port", "70000"], "raft-port"),
        (["--log-level", "loud"], "log-level"),
        (["--shutdown-timeout", "forever"], "shutdown-timeout"),
        (["--catchup-window", "-5"], "catchup-window"),
        (["--tag", "novalue"], "tag"),
        (["--http-addr", "nowhere"], "http-addr"),
        (["--bind-addr", "0.0.0.0"], "bind-addr"),
        (["--config", "{tmp}/missing.yml"], "missing.yml"),
        (["--config", "{tmp}"], "config file"),
        (["--config", "{tmp}/bad.yml"], "bad.yml"),
        (["--config", "{tmp}/unknown.yml"], "colour"),
        (["--config", "{tmp}/binary.yml"], "binary.yml"),
    ],
)
def test_agent_with_a_bad_option_says_which_in_one_line_and_fails(tmp_path, args, option):
    (tmp_path / "bad.yml").write_text("rpc-port: [1,\n")
    (tmp_path / "unknown.yml").write_text("colour: blue\n")
    (tmp_path / "binary.yml").write_bytes(b"\xff\xfe\x00\x01")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = dkron(
        "agent",
        "--server",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-addr",
        f"127.0.0.1:{free_port()}",
        "--raft-port",
        str(free_port()),
        *args,
        cwd=tmp_path,
        timeout=20,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dkron agent: ") and option in lines[0], lines[0]
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_agent_with_a_bad_env_value_names_the_variable(tmp_path):
    result = dkron("agent", "--server", "--data-dir", str(tmp_path / "d"), env={"DKRON_RETENTION_COUNT": "lots"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "DKRON_RETENTION_COUNT" in result.stderr and "retention-count" in result.stderr


def test_agent_whose_http_port_is_taken_exits_with_a_message(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = dkron(
            "agent",
            "--server",
            "--data-dir",
            str(tmp_path / "d"),
            "--http-addr",
            f"127.0.0.1:{port}",
            "--raft-port",
            str(free_port()),
            timeout=30,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "cannot start" in result.stderr and "in use" in result.stderr


def _get(url: str) -> dict | list | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def test_agent_server_applies_flag_over_env_over_file_and_stops_cleanly_on_sigterm(tmp_path):
    http_port, raft_port, file_rpc_port = free_port(), free_port(), free_port()
    config = tmp_path / "dkron.yml"
    config.write_text(
        "node-name: from-file\n"
        f"rpc-port: {file_rpc_port}\n"
        "log-json: true\n"
        "tags:\n  source: file\n  zone: file-zone\n"
        "shutdown-timeout: 5s\n"
    )
    env = {"DKRON_NODE_NAME": "from-env", "DKRON_TAG": "source=env,rack=r1"}
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dkron.cli",
                "agent",
                "--server",
                "--config",
                str(config),
                "--data-dir",
                str(tmp_path / "data"),
                "--http-addr",
                f"127.0.0.1:{http_port}",
                "--raft-port",
                str(raft_port),
                "--node-name",
                "from-flag",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        deadline = time.monotonic() + 30
        index = None
        while time.monotonic() < deadline and proc.poll() is None:
            index = _get(f"http://127.0.0.1:{http_port}/v1")
            if index and index["raft"]["leader"]:
                break
            time.sleep(0.1)
        assert index, log_path.read_text()
        assert index["agent"]["name"] == "from-flag"  # flag beats env and file
        assert index["agent"]["server"] is True
        assert index["tags"] == {"source": "env", "rack": "r1"}  # env beats file (whole option)
        members = _get(f"http://127.0.0.1:{http_port}/v1/members")
        assert members[0]["Name"] == "from-flag"
        assert members[0]["Port"] == file_rpc_port  # only the file sets it
        assert members[0]["Tags"]["source"] == "env" and members[0]["Tags"]["server"] == "true"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines, "the agent logged nothing"
    records = []  # log-json from the file: every line is JSON
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # name the line: CI once saw one that was not JSON
            raise AssertionError(f"a log line is not JSON: {line!r}") from None
    assert any(r["message"] == "stopped" for r in records)
    assert "Traceback" not in log_path.read_text()
