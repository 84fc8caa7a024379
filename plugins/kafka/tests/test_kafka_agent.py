"""End to end: a real agent loads the plugin, runs a kafka job, and a real consumer reads the message."""

from __future__ import annotations

from typing import Any

from kafka_support import Broker, Produced, consume_one


def test_agent_runs_a_kafka_job_and_the_message_is_consumed(agent_factory: Any, broker: Broker) -> None:
    agent = agent_factory().start()
    plugins = {p["name"]: p for p in agent.get("/v1/plugins").json()}
    assert plugins["kafka"]["distribution"] == "dkron-executor-kafka"
    assert (plugins["kafka"]["executors"], plugins["kafka"]["error"]) == (["kafka"], None)

    bad = {"name": "bad", "schedule": "@manually", "executor": "kafka", "executor_config": {"topic": "t"}}
    rejected = agent.post("/v1/jobs", bad)
    assert rejected.status == 400, rejected
    assert rejected.json()["field"] == "executor_config.brokerAddress"

    job = {
        "name": "emit",
        "schedule": "@manually",
        "executor": "kafka",
        "executor_config": {
            "brokerAddress": broker.address,
            "topic": "dkron-jobs",
            "key": "emit",
            "message": '{"event": "tick"}',
            "timeout": 10,
        },
    }
    assert agent.post("/v1/jobs", job).status == 201
    started = agent.post("/v1/jobs/emit/run")
    assert started.status == 202, started
    exec_id = started.json()["execution_id"]

    def finished() -> Any:
        execution = agent.get(f"/v1/jobs/emit/executions/{exec_id}").json()
        return execution if execution.get("status") in ("success", "failed") else None

    execution = agent.wait_for(finished, 20)
    assert execution["status"] == "success", execution
    output = execution["output"]
    assert output.startswith('produced 17 bytes with key "emit" to topic dkron-jobs, partition '), output
    partition, offset = (int(x) for x in output.rstrip("\n").split("partition ")[1].split(", offset "))
    assert consume_one(broker.address, Produced(17, "dkron-jobs", partition, offset)) == (b"emit", b'{"event": "tick"}')
