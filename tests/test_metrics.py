"""``GET /metrics`` and structured logs of a real agent."""

from __future__ import annotations

import json
import urllib.request

from dkron.testing import AgentProcess, free_port


def scrape(agent: AgentProcess) -> tuple[str, dict[str, float]]:
    with urllib.request.urlopen(agent.url + "/metrics", timeout=10) as answer:
        content_type = answer.headers["Content-Type"]
        text = answer.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return content_type, values


def test_metrics_count_runs_lateness_duration_running_and_leadership(agent_factory):
    agent = agent_factory().start()
    shell = {"executor": "shell", "executor_config": {"command": "true"}}
    assert agent.post("/v1/jobs", {"name": "m-ok", "schedule": "@every 1s", **shell}).status == 201
    bad = {"name": "m-bad", "schedule": "@every 1h", "executor": "shell", "executor_config": {"command": "exit 1"}}
    assert agent.post("/v1/jobs", bad).status == 201
    assert agent.run_and_wait("m-bad")["status"] == "failed"
    sleeper = {"name": "m-slow", "schedule": "@every 1s", "concurrency": "forbid", "executor": "shell"}
    sleeper["executor_config"] = {"command": "sleep 30"}
    assert agent.post("/v1/jobs", sleeper).status == 201

    def ready():
        _, v = scrape(agent)
        return (
            v
            if v.get('dkron_job_runs_succeeded_total{job="m-ok"}', 0) >= 3
            and v.get('dkron_job_runs_skipped_total{job="m-slow"}', 0) >= 1
            else None
        )

    values = agent.wait_for(ready, timeout=20)
    content_type, _ = scrape(agent)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert values['dkron_job_runs_failed_total{job="m-bad"}'] == 1
    assert values['dkron_job_runs_started_total{job="m-bad"}'] == 1
    assert values['dkron_job_runs_started_total{job="m-ok"}'] >= 3
    # Scheduled runs start within a fraction of a second of their tick: every one in the 0.5 s bucket.
    count = values['dkron_job_lateness_seconds_count{job="m-ok"}']
    assert count >= 3
    assert values['dkron_job_lateness_seconds_bucket{job="m-ok",le="0.5"}'] >= count - 1
    assert 'dkron_job_lateness_seconds_count{job="m-bad"}' not in values  # manual runs have no tick
    assert values['dkron_job_run_duration_seconds_count{job="m-bad"}'] == 1
    assert values['dkron_executions_running{job="m-slow"}'] == 1
    assert values["dkron_leader"] == 1
    assert values['dkron_raft_state{state="leader"}'] == 1 and values['dkron_raft_state{state="follower"}'] == 0
    assert values["dkron_raft_applied_index"] > 0

    # A deleted job's series go away (label cardinality stays bounded by the jobs that exist).
    assert agent.request("DELETE", "/v1/jobs/m-bad").status == 200
    _, after = scrape(agent)
    assert not any('job="m-bad"' in key for key in after)


def _agent_with_failing_webhook(agent_factory, *args: str) -> AgentProcess:
    # A webhook to a closed port fails at once and is logged from inside the run's context.
    return agent_factory(
        extra_args=(f"--webhook-endpoint=http://127.0.0.1:{free_port()}/", "--notification-retries=0", *args)
    ).start()


def _run_logged(agent: AgentProcess) -> dict:
    job = {"name": "logged", "schedule": "@every 1h", "executor": "shell", "executor_config": {"command": "true"}}
    assert agent.post("/v1/jobs", job).status == 201
    execution = agent.run_and_wait("logged")
    agent.wait_for(lambda: "notification failed" in agent.log())
    agent.stop()
    return execution


def test_json_logs_carry_the_job_and_run_id(agent_factory):
    agent = _agent_with_failing_webhook(agent_factory, "--log-format", "json")
    execution = _run_logged(agent)
    lines = [json.loads(line) for line in agent.log_path.read_text().splitlines() if line.startswith("{")]
    assert len(lines) > 3, agent.log()
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    [failure] = [line for line in lines if "notification failed" in line["message"]]
    assert failure["job"] == "logged" and failure["run_id"] == execution["run_id"]
    assert failure["level"] == "error"


def test_text_logs_name_the_job_and_run(agent_factory):
    agent = _agent_with_failing_webhook(agent_factory)
    execution = _run_logged(agent)
    [failure] = [line for line in agent.log_path.read_text().splitlines() if "notification failed" in line]
    assert failure.endswith(f"[job=logged run={execution['run_id']}]")
