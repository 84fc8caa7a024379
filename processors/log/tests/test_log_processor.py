"""The log processor writes each execution's output to the agent log and replaces it."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dkron.contracts import ConfigError
from dkron_processor_log import LogProcessor


def _execution(**overrides: Any) -> dict[str, Any]:
    return {"job_name": "backup", "id": "exec-1", "success": True, "output": "line 1\nline 2\n", **overrides}


def test_success_is_logged_at_info_and_output_replaced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dkron.processor.log")
    execution = _execution()
    result = LogProcessor().process(execution, {})
    assert result == {**execution, "output": "Output in dkron log"}
    assert execution["output"] == "line 1\nline 2\n"  # the caller's record is not mutated
    [record] = caplog.records
    assert record.name == "dkron.processor.log"
    assert record.levelno == logging.INFO
    assert record.getMessage().splitlines() == [
        "----- BEGIN OUTPUT job=backup execution=exec-1 -----",
        "line 1",
        "line 2",
        "----- END OUTPUT -----",
    ]


def test_failure_is_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dkron.processor.log")
    LogProcessor().process(_execution(success=False, output="boom"), {"forward": "false"})
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "boom" in record.getMessage()


@pytest.mark.parametrize("spelling", ["true", "1", "T", "True"])
def test_forward_keeps_the_output(caplog: pytest.LogCaptureFixture, spelling: str) -> None:
    caplog.set_level(logging.INFO, logger="dkron.processor.log")
    execution = _execution()
    assert LogProcessor().process(execution, {"forward": spelling}) == execution
    assert "line 1" in caplog.text  # logged even when forwarded


def test_injected_reporting_node_is_accepted(caplog: pytest.LogCaptureFixture) -> None:
    config = LogProcessor().validate({"forward": "TRUE", "reporting_node": "leader-1"})
    assert config == {"forward": "true", "reporting_node": "leader-1"}
    assert LogProcessor().process(_execution(), config)["output"] == "line 1\nline 2\n"


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        LogProcessor().validate({"fowrard": "true"})
    assert info.value.key == "fowrard"


@pytest.mark.parametrize("value", ["yes", "on", "2"])
def test_bad_forward_is_rejected(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        LogProcessor().validate({"forward": value})
    assert info.value.key == "forward"


def test_plugin_loads_through_entry_point() -> None:
    from dkron.plugins import load_plugins

    host = load_plugins()
    assert "log" in host.processors
    assert host.infos["log"].error == ""
