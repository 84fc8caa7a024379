"""The README's tour, against a real agent process and real HTTP."""

from __future__ import annotations

import time


def test_job_runs_every_two_seconds_and_history_is_newest_first(dkron_agent, tmp_path):
    out = tmp_path / "hello.log"
    job = {
        "name": "hello",
        "schedule": "@every 1s",
        "executor": "shell",
        "executor_config": {"command": f"date +%s.%N >> {out}", "shell": True},
    }
    created = dkron_agent.post("/v1/jobs", job)
    assert created.status == 201, created
    assert created.headers["Location"] == "/v1/jobs/hello"
    dkron_agent.wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, timeout=10)
    got = dkron_agent.get("/v1/jobs/hello").json()
    assert got["success_count"] >= 2 and got["status"] == "success"
    assert got["next"] > got["last_success"]
    execs = dkron_agent.get("/v1/jobs/hello/executions")
    rows = execs.json()
    assert int(execs.headers["X-Total-Count"]) == len(rows) >= 2
    started = [r["started_at"] for r in rows]
    assert started == sorted(started, reverse=True)
    assert all(r["run_id"].startswith("hello@") for r in rows)


def test_manual_run_answers_202_at_once_with_the_execution_id(dkron_agent):
    job = {
        "name": "slow",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "sleep 2; echo finished", "shell": "true"},
    }
    assert dkron_agent.post("/v1/jobs", job).status == 201
    began = time.monotonic()
    res = dkron_agent.post("/v1/jobs/slow/run")
    assert res.status == 202 and time.monotonic() - began < 1.0
    exec_id = res.json()["execution_id"]
    busy = dkron_agent.wait_for(lambda: dkron_agent.get("/v1/busy").json())
    assert busy[0]["id"] == exec_id
    done = dkron_agent.wait_for(
        lambda: (e := dkron_agent.get(f"/v1/jobs/slow/executions/{exec_id}").json())["status"] == "success" and e
    )
    assert done["output"].strip() == "finished"


def test_a_manual_run_right_after_start_is_accepted(agent_factory):
    # The node must be its own target from the first request, before its leadership is prepared.
    job = {"name": "early", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "true"}}
    for _ in range(3):
        agent = agent_factory().start()
        assert agent.post("/v1/jobs", job).status == 201
        res = agent.post("/v1/jobs/early/run")
        assert res.status == 202, res
        agent.stop()
