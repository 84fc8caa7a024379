"""End to end: a real agent loads the plugin, runs a nats job, and a real subscriber receives it."""

from __future__ import annotations

import asyncio
from typing import Any

from nats_support import NatsServer, import_nats


def test_agent_runs_a_nats_job_and_the_message_arrives(agent_factory: Any, userpass_server: NatsServer) -> None:
    agent = agent_factory().start()
    plugins = {p["name"]: p for p in agent.get("/v1/plugins").json()}
    assert plugins["nats"]["distribution"] == "dkron-executor-nats"
    assert (plugins["nats"]["executors"], plugins["nats"]["error"]) == (["nats"], None)

    bad = {"name": "bad", "schedule": "@manually", "executor": "nats", "executor_config": {"url": "nats://h"}}
    rejected = agent.post("/v1/jobs", bad)
    assert rejected.status == 400, rejected
    assert rejected.json()["field"] == "executor_config.subject"

    job = {
        "name": "notify",
        "schedule": "@manually",
        "executor": "nats",
        "executor_config": {
            "url": userpass_server.url,
            "subject": "dkron.jobs.notify",
            "message": "job finished",
            "userName": "alice",
            "password": "s3cret",
            "timeout": 5,
        },
    }
    assert agent.post("/v1/jobs", job).status == 201

    nats = import_nats()

    async def main() -> tuple[dict[str, Any], bytes]:
        client = await nats.connect(userpass_server.url, user="alice", password="s3cret", allow_reconnect=False)
        try:
            sub = await client.subscribe("dkron.jobs.notify")
            await client.flush()
            started = await asyncio.to_thread(agent.post, "/v1/jobs/notify/run")
            assert started.status == 202, started
            exec_id = started.json()["execution_id"]
            msg = await sub.next_msg(timeout=10)

            def finished() -> Any:
                execution = agent.get(f"/v1/jobs/notify/executions/{exec_id}").json()
                return execution if execution.get("status") in ("success", "failed") else None

            execution = await asyncio.to_thread(agent.wait_for, finished, 10)
            return execution, msg.data
        finally:
            await client.close()

    execution, data = asyncio.run(main())
    assert data == b"job finished"
    assert execution["status"] == "success", execution
    assert execution["output"] == f"published 12 bytes to dkron.jobs.notify on {userpass_server.url}\n"
