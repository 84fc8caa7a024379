"""Secret executor config values: redacted in every answer and the audit log, kept on round trips.

Every agent the fixtures start also scans each response it sends for any job's secret value and
fails the test that made it leak (``dkron.api.leakcheck``); the last test checks that guard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dkron.redact import REDACTED

SECRET = "s3cr3t-value-that-must-never-leak"


def secret_job(name: str, out: Path, secret: str = SECRET) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {
            "command": f"sh -c 'printf %s \"$API_TOKEN\" > {out}'",
            "secret_env": f"API_TOKEN={secret}",
        },
    }


def wait_file(path: Path, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def test_secret_values_are_redacted_and_kept_on_a_round_trip(dkron_agent, tmp_path):
    out = tmp_path / "seen"
    created = dkron_agent.post("/v1/jobs", secret_job("with-secret", out))
    assert created.status == 201
    assert created.json()["executor_config"]["secret_env"] == REDACTED
    shown = dkron_agent.get("/v1/jobs/with-secret").json()
    assert shown["executor_config"]["secret_env"] == REDACTED
    assert SECRET.encode() not in dkron_agent.get("/v1/jobs").body
    # Edit something else, sending the redacted value back: the stored secret is kept.
    shown["executor_config"]["timeout"] = "30s"
    edit = {k: shown[k] for k in ("name", "schedule", "executor", "executor_config")}
    assert dkron_agent.request("PUT", "/v1/jobs/with-secret", edit).status == 201
    assert dkron_agent.post("/v1/jobs/with-secret/run").status == 202
    assert wait_file(out) == SECRET  # the job really got the stored secret
    # The audit log's diff is redacted too.
    audit = dkron_agent.get("/v1/audit?target=with-secret")
    assert audit.status == 200 and SECRET.encode() not in audit.body
    update = next(e for e in audit.json() if e["action"] == "job.update")
    assert update["details"]["changes"]["executor_config"][1]["secret_env"] == REDACTED
    # A backup restored as it was downloaded keeps the secrets of existing jobs.
    backup = dkron_agent.get("/v1/jobs").json()
    restorable = [{k: j[k] for k in ("name", "schedule", "executor", "executor_config")} for j in backup]
    assert dkron_agent.post("/v1/restore", restorable).status == 200
    out.unlink()
    assert dkron_agent.post("/v1/jobs/with-secret/run").status == 202
    assert wait_file(out) == SECRET
    assert SECRET not in dkron_agent.log_path.read_text()


def test_the_placeholder_for_a_job_without_a_stored_secret_is_refused(dkron_agent, tmp_path):
    job = secret_job("new-with-placeholder", tmp_path / "x", secret="x")
    job["executor_config"]["secret_env"] = REDACTED
    response = dkron_agent.post("/v1/jobs", job)
    assert response.status == 400 and "placeholder" in response.json()["error"]


def test_plugins_declare_their_secret_keys():
    from dkron.plugins import load_plugins

    executors = load_plugins().executors
    assert executors.secret_keys("shell") == {"secret_env"}
    assert executors.secret_keys("http") == {"headers"}
    assert executors.secret_keys("nats") == {"password", "token"}
    assert executors.secret_keys("rabbitmq") == {"url"}
    assert executors.secret_keys("kafka") == {"saslPassword"}


def test_there_is_no_debug_endpoint(dkron_agent):
    for path in ("/debug/vars", "/debug/pprof/", "/v1/debug/vars"):
        assert dkron_agent.get(path).status == 404


def test_a_job_that_prints_its_secret_shows_it_masked(dkron_agent, tmp_path):
    job = secret_job("echoes-secret", tmp_path / "y")
    job["executor_config"]["command"] = "sh -c 'echo \"token is $API_TOKEN.\"'"
    assert dkron_agent.post("/v1/jobs", job).status == 201
    execution = dkron_agent.post("/v1/jobs/echoes-secret/run").json()["execution_id"]
    done = dkron_agent.wait_for(
        lambda: (
            (e := dkron_agent.get(f"/v1/jobs/echoes-secret/executions/{execution}").json())["status"] == "success" and e
        )
    )
    assert done["output"] == "token is " + "*" * len(SECRET) + ".\n"


def test_the_suite_wide_guard_flags_a_response_with_a_secret(dkron_agent):
    """The guard itself: a secret value copied into a field that is not secret is flagged."""
    job = secret_job("copies-secret", Path("/nonexistent"))
    job["metadata"] = {"note": SECRET}  # the user's mistake; the scan catches it wherever it appears
    assert dkron_agent.post("/v1/jobs", job).status == 201
    assert "SECRET LEAK" in dkron_agent.secret_leaks()
    (dkron_agent.data_dir / "secret-leak.txt").unlink()  # expected here: do not fail this test at teardown
