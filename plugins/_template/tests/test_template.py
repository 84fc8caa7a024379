"""Tests of the template executor, written with the fixtures of ``dkron.testing``.

Those fixtures come with dkron-core (a pytest plugin): install the plugin (``pip install -e .``)
and run ``pytest`` in this folder. Keep the three kinds of test when you copy it:

* ``run_executor``: validate + execute in-process, as the agent does, with a real cancel token;
* ``dkron_plugins``: the plugin registered through its hook, alone, as the agent loads it;
* ``dkron_agent``: a real agent process that finds the installed plugin and runs a job with it.
"""

from __future__ import annotations

from typing import Any

import pytest

import dkron_executor_template as plugin  # RENAME with the package folder
from dkron.contracts import CancelToken, ConfigError
from dkron.testing import AgentProcess, IsolatedPluginHost

NAME = plugin.EXECUTOR_NAME


def test_writes_the_message(run_executor: Any) -> None:
    result, output = run_executor(plugin.TemplateExecutor(), {"message": "hello, dkron"})
    assert (result.success, result.error) == (True, "")
    assert output == "hello, dkron\n"


@pytest.mark.parametrize(
    ("config", "key", "text"),
    [
        ({}, "message", "message is required"),
        ({"message": "   "}, "message", "message is required"),
        ({"message": "x" * (plugin.MAX_MESSAGE_BYTES + 1)}, "message", "at most"),
        ({"message": "hi", "mesage": "typo"}, "mesage", "unknown key 'mesage'"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(config: dict[str, str], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        plugin.TemplateExecutor().validate(config)
    assert info.value.key == key
    assert text in str(info.value)


def test_run_executor_validates_first(run_executor: Any) -> None:
    with pytest.raises(ConfigError):
        run_executor(plugin.TemplateExecutor, {"message": ""})


def test_a_killed_execution_stops_with_a_reason(run_executor: Any) -> None:
    cancel = CancelToken()
    cancel.cancel("killed by user")
    result, output = run_executor(plugin.TemplateExecutor, {"message": "x"}, cancel=cancel)
    assert (result.success, result.error, output) == (False, f"{NAME}: killed: killed by user", "")


def test_registered_through_the_hook(dkron_plugins: IsolatedPluginHost) -> None:
    info = dkron_plugins.register(plugin, NAME)
    assert (info.error, info.hooks, info.executors) == ("", ["dkron_register_executors"], [NAME])
    assert isinstance(dkron_plugins.executors.get(NAME), plugin.TemplateExecutor)


def test_a_real_agent_runs_a_job_with_the_installed_plugin(dkron_agent: AgentProcess) -> None:
    listed = {p["name"]: p for p in dkron_agent.get("/v1/plugins").json()}
    assert listed[NAME]["error"] is None and listed[NAME]["executors"] == [NAME], listed

    bad = {"name": "bad", "schedule": "@manually", "executor": NAME, "executor_config": {}}
    rejected = dkron_agent.post("/v1/jobs", bad)
    assert (rejected.status, rejected.json()["field"]) == (400, "executor_config.message"), rejected

    job = {"name": "greet", "schedule": "@manually", "executor": NAME, "executor_config": {"message": "hi"}}
    assert dkron_agent.post("/v1/jobs", job).status == 201
    started = dkron_agent.post("/v1/jobs/greet/run")
    assert started.status == 202, started
    path = f"/v1/jobs/greet/executions/{started.json()['execution_id']}"

    def finished() -> Any:
        execution = dkron_agent.get(path).json()
        return execution if execution.get("status") in ("success", "failed") else None

    execution = dkron_agent.wait_for(finished, 20)
    assert (execution["status"], execution["output"]) == ("success", "hi\n"), execution
