"""End to end: a real agent, configured with --mail-*, e-mails a job's report to a real SMTP server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from email_support import SmtpServer

from dkron.testing import clean_env


def _run_job(agent: Any, name: str) -> dict[str, Any]:
    exec_id = agent.post(f"/v1/jobs/{name}/run").json()["execution_id"]

    def finished() -> Any:
        execution = agent.get(f"/v1/jobs/{name}/executions/{exec_id}").json()
        return execution if execution.get("status") in ("success", "failed") else None

    return agent.wait_for(finished)


def test_agent_emails_the_report(agent_factory: Any, smtp_server: SmtpServer) -> None:
    pytest.importorskip("dkron_executor_shell", reason="the jobs run through the shell executor")
    agent = agent_factory(
        extra_args=(
            "--mail-host",
            "127.0.0.1",
            "--mail-port",
            str(smtp_server.port),
            "--mail-from",
            "dkron@example.test",
            "--mail-tls",
            "none",
        ),
    ).start()

    bad = {"name": "bad", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "true"},
           "processors": {"email": {"emails": "not an address"}}}  # fmt: skip
    rejected = agent.post("/v1/jobs", bad)
    assert rejected.status == 400
    assert "processors.email.emails" in rejected.body.decode()

    job = {"name": "report", "schedule": "@manually", "executor": "shell",
           "executor_config": {"command": "echo hello from the job"},
           "processors": {"email": {"emails": "ops@example.test"}}}  # fmt: skip
    assert agent.post("/v1/jobs", job).status == 201
    execution = _run_job(agent, "report")
    assert execution["status"] == "success", execution
    assert execution["output"] == "Output e-mailed to 1 recipient(s)"

    [received] = smtp_server.wait_for_messages()
    assert received.mail_from == "dkron@example.test"
    assert received.rcpt_tos == ["ops@example.test"]
    assert received.message["Subject"] == "[Dkron]Success report execution report"
    body = received.message.get_content().replace("\r\n", "\n")
    assert f"Execution: {execution['id']}\n" in body
    assert "Node: node1\n" in body
    assert body.endswith("Output:\nhello from the job\n")

    failing = {"name": "failing", "schedule": "@manually", "executor": "shell",
               "executor_config": {"command": "echo oops; exit 3", "shell": True},
               "processors": {"email": {"emails": "ops@example.test", "on": "failure", "forward": True}}}  # fmt: skip
    assert agent.post("/v1/jobs", failing).status == 201
    execution = _run_job(agent, "failing")
    assert execution["status"] == "failed"
    assert "oops" in execution["output"]  # forward: the record keeps its output
    _, second = smtp_server.wait_for_messages(2)
    assert second.message["Subject"] == "[Dkron]Failed failing execution report"
    assert "oops" in second.message.get_content()


@pytest.mark.parametrize(("flag", "value"), [("--mail-tls", "ssl"), ("--mail-port", "70000"), ("--mail-timeout", "0")])
def test_agent_refuses_bad_mail_options(tmp_path: Path, flag: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dkron.cli", "agent", "--data-dir", str(tmp_path / "data"), flag, value],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(DKRON_CONFIG=""),
    )
    assert result.returncode == 2, result
    assert f"dkron agent: {flag[2:]}" in result.stderr
