"""The plugin as the agent uses it: loaded through its entry point, and a real agent running a job."""

from __future__ import annotations

from typing import Any

from dkron.plugins import load_plugins
from dkron_executor_http import HttpExecutor


def test_plugin_loads_through_entry_point() -> None:
    host = load_plugins()
    assert host.infos["http"].error == ""
    assert host.infos["http"].executors == ["http"]
    assert host.infos["http"].distribution == "dkron-executor-http"
    assert isinstance(host.executors.get("http"), HttpExecutor)


def test_agent_runs_an_http_job(dkron_agent: Any, server: Any) -> None:
    bad = {"name": "bad", "schedule": "@manually", "executor": "http",
           "executor_config": {"method": "GET", "url": server.url(), "expectCode": "20"}}  # fmt: skip
    rejected = dkron_agent.post("/v1/jobs", bad)
    assert rejected.status == 400
    assert "executor_config.expectCode" in rejected.body.decode()

    job = {"name": "ping", "schedule": "@manually", "executor": "http",
           "executor_config": {"method": "post", "url": server.url("/echo"), "body": "from-agent",
                               "headers": '["X-Job: ping"]', "expectCode": "200"}}  # fmt: skip
    created = dkron_agent.post("/v1/jobs", job)
    assert created.status == 201, created
    stored = dkron_agent.get("/v1/jobs/ping").json()
    assert stored["executor_config"]["method"] == "POST"  # normalised at submission
    exec_id = dkron_agent.post("/v1/jobs/ping/run").json()["execution_id"]

    def finished() -> Any:
        execution = dkron_agent.get(f"/v1/jobs/ping/executions/{exec_id}").json()
        return execution if execution.get("status") in ("success", "failed") else None

    execution = dkron_agent.wait_for(finished)
    assert execution["status"] == "success", execution
    assert execution["output"].startswith("HTTP/1.1 200 OK\n{")
    [seen] = server.seen
    assert (seen.method, seen.body, seen.header("X-Job")) == ("POST", b"from-agent", "ping")
