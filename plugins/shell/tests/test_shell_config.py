"""Validation of executor_config at submission: every error names the key to fix."""

from __future__ import annotations

import base64

import pytest

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest
from dkron_executor_shell import ShellExecutor
from dkron_executor_shell.config import parse_duration, parse_env, parse_mem_limit


@pytest.mark.parametrize(
    ("config", "key", "fragment"),
    [
        ({}, "command", "command is required"),
        ({"command": "   "}, "command", "command is required"),
        ({"command": "echo 'unbalanced"}, "command", "quotation"),
        ({"command": "true", "shell": "yes"}, "shell", "shell"),
        ({"command": "true", "env": "1BAD=x"}, "env", "1BAD"),
        ({"command": "true", "env": "A B=x"}, "env", "A B"),
        ({"command": "true", "env": "novalue,A=1"}, "env", "novalue"),
        ({"command": "true", "env": '{"A": [1]}'}, "env", "A"),
        ({"command": "true", "env": '{"A": "1"'}, "env", "JSON"),
        ({"command": "true", "env": '["A=1"]'}, "env", "object"),
        ({"command": "true", "cwd": "relative/dir"}, "cwd", "absolute"),
        ({"command": "true", "timeout": "abc"}, "timeout", "duration"),
        ({"command": "true", "timeout": "10"}, "timeout", "duration"),
        ({"command": "true", "timeout": "0s"}, "timeout", "greater than zero"),
        ({"command": "true", "timeout": "-1s"}, "timeout", "greater than zero"),
        ({"command": "true", "mem_limit": "10XB"}, "mem_limit", "size"),
        ({"command": "true", "mem_limit": "0"}, "mem_limit", "greater than zero"),
        ({"command": "true", "mem_limit": "-5MB"}, "mem_limit", "size"),
        ({"command": "true", "payload": "not base64!"}, "payload", "base64"),
        ({"command": "true", "success_codes": "0,x"}, "success_codes", "exit codes"),
        ({"command": "true", "success_codes": "256"}, "success_codes", "exit codes"),
        ({"command": "true", "comand": "typo"}, "comand", "unknown key"),
        ({"command": "true", "su": "nobody"}, "su", "not supported"),
    ],
)
def test_invalid_config_names_the_key(config: dict[str, str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ShellExecutor().validate(config)
    assert info.value.key == key
    assert fragment in str(info.value)


@pytest.mark.parametrize("spelling", ["1", "t", "T", "TRUE", "true", "True"])
def test_shell_true_spellings_normalise(spelling: str) -> None:
    assert ShellExecutor().validate({"command": "x", "shell": spelling})["shell"] == "true"


@pytest.mark.parametrize("spelling", ["0", "f", "F", "FALSE", "false", "False"])
def test_shell_false_spellings_normalise(spelling: str) -> None:
    assert ShellExecutor().validate({"command": "x", "shell": spelling})["shell"] == "false"


def test_validate_keeps_values_as_written() -> None:
    config = {
        "command": "echo hi",
        "timeout": " 1h30m ",
        "mem_limit": "512MB",
        "env": "A=1",
        "payload": base64.b64encode(b"x").decode(),
        "cwd": "/tmp",
        "success_codes": "0,1",
    }
    normalised = ShellExecutor().validate(config)
    assert normalised == {**config, "timeout": "1h30m"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1h30m", 5400), ("1.5s", 1.5), ("500ms", 0.5), ("2m0.5s", 120.5), ("100us", 1e-4)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("50MB", 50 * 1024**2),
        ("50mb", 50 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("2 KB", 2048),
        ("10 bytes", 10),
        ("1T", 1024**4),
    ],
)
def test_mem_limit_units(text: str, size: int) -> None:
    assert parse_mem_limit(text) == size


def test_env_comma_form_keeps_commas_in_values() -> None:
    assert parse_env("A=x,y,B=z") == (("A", "x,y"), ("B", "z"))
    assert parse_env("A=1, B=2,") == (("A", "1"), ("B", "2"))


def test_env_json_form() -> None:
    assert parse_env('{"K": "v,with,commas", "N": 3, "F": true}') == (
        ("K", "v,with,commas"),
        ("N", "3"),
        ("F", "true"),
    )


def test_execute_reports_bad_config_instead_of_raising() -> None:
    # If the core ever skips validation, the run fails with the reason; no exception escapes.
    req = ExecutionRequest(job_name="j", run_id="r", config={"command": "true", "timeout": "soon"})
    sink = type("Sink", (), {"write": lambda self, chunk: None})()
    result = ShellExecutor().execute(req, sink, CancelToken())
    assert not result.success
    assert "timeout" in result.error


def test_plugin_loads_through_entry_point() -> None:
    from dkron.plugins import load_plugins

    host = load_plugins()
    assert "shell" in host.executors
    assert host.executors.owner("shell") == "shell"
    assert host.infos["shell"].error == ""
