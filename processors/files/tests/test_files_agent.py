"""End to end: a real agent runs a job whose output the files processor stores on disk."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest


def test_agent_writes_the_output_to_a_file(dkron_agent: Any, tmp_path: Path) -> None:
    pytest.importorskip("dkron_executor_shell", reason="the job runs through the shell executor")
    log_dir = tmp_path / "job-logs"
    bad = {"name": "bad", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "true"},
           "processors": {"files": {"log_dir": "relative"}}}  # fmt: skip
    rejected = dkron_agent.post("/v1/jobs", bad)
    assert rejected.status == 400
    assert "processors.files.log_dir" in rejected.body.decode()

    job = {"name": "report", "schedule": "@manually", "executor": "shell",
           "executor_config": {"command": "echo hello from the job"},
           "processors": {"files": {"log_dir": str(log_dir), "forward": False}}}  # fmt: skip
    created = dkron_agent.post("/v1/jobs", job)
    assert created.status == 201, created
    exec_id = dkron_agent.post("/v1/jobs/report/run").json()["execution_id"]

    def finished() -> Any:
        execution = dkron_agent.get(f"/v1/jobs/report/executions/{exec_id}").json()
        return execution if execution.get("status") in ("success", "failed") else None

    execution = dkron_agent.wait_for(finished)
    path = log_dir / "report" / f"{exec_id}.log"
    assert execution["status"] == "success", execution
    assert execution["output"] == str(path)
    assert path.read_text() == "hello from the job\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
