"""Job semantics against a real agent: retries, chains, overlap, time windows, spreading, preview.

One agent is shared by the module (every test uses its own job names). Schedules are
``@every 1s`` or manual runs and backoffs are a few hundred ms, so the module stays fast.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dkron.testing import AgentProcess


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Any:
    process = AgentProcess(tmp_path_factory.mktemp("jobsem") / "data", extra_args=("--retry-backoff-base", "200ms"))
    process.start()
    yield process
    process.stop(timeout=10)


def shell(name: str, command: str, schedule: str = "@manually", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": schedule,
        "executor": "shell",
        "executor_config": {"command": command, "shell": "true"},
        **fields,
    }


def create(agent: AgentProcess, job: dict[str, Any]) -> dict[str, Any]:
    answer = agent.post("/v1/jobs", job)
    assert answer.status == 201, answer
    return answer.json()


def executions(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    answer = agent.get(f"/v1/jobs/{name}/executions?_sort=started_at&_order=ASC")
    assert answer.status == 200, answer
    return answer.json()


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def flaky(counter: Path, succeed_at: int) -> str:
    """Fails until it has been started ``succeed_at`` times (counted in a file)."""
    return f'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ "$n" -ge {succeed_at} ]'


# -- retries -------------------------------------------------------------------------------------


def test_a_run_that_succeeds_on_a_retry_is_a_success_and_triggers_its_child(agent, tmp_path):
    create(agent, shell("flaky", flaky(tmp_path / "n", 3), retries=3, retry_backoff="300ms"))
    create(agent, shell("flaky-child", f"echo child >> {tmp_path / 'child'}", schedule="", parent_job="flaky"))
    started = agent.post("/v1/jobs/flaky/run")
    assert started.status == 202, started
    run_id = started.json()["run_id"]

    agent.wait_for(lambda: (tmp_path / "child").exists(), timeout=15)
    rows = executions(agent, "flaky")
    assert [(e["attempt"], e["status"]) for e in rows] == [(1, "failed"), (2, "failed"), (3, "success")], rows
    assert {e["run_id"] for e in rows} == {run_id}, "every attempt belongs to the same run"
    assert len({e["id"] for e in rows}) == 3, "each attempt is its own execution"
    assert [e["kind"] for e in rows] == ["manual", "retry", "retry"], rows
    # Exponential backoff with jitter: at least half of 300 ms, then of 600 ms.
    assert ts(rows[1]["started_at"]) - ts(rows[0]["finished_at"]) >= 0.14, rows
    assert ts(rows[2]["started_at"]) - ts(rows[1]["finished_at"]) >= 0.29, rows
    # A retry's scheduled_at is its not-before time; it starts right then, not a planning cycle later.
    lateness = [ts(e["started_at"]) - ts(e["scheduled_at"]) for e in rows[1:]]
    print(f"\nretry lateness after not-before: {[round(x * 1000) for x in lateness]} ms")
    assert all(-0.01 <= x < 0.5 for x in lateness), lateness
    job = agent.get("/v1/jobs/flaky").json()
    assert job["status"] == "success", job  # not Dkron's "partially_failed"
    child = agent.wait_for(lambda: [e for e in executions(agent, "flaky-child") if e["status"] == "success"])
    assert child[0]["kind"] == "dependent" and child[0]["run_id"] == f"flaky-child@{run_id}", child
    delay = ts(child[0]["started_at"]) - ts(rows[2]["finished_at"])
    print(f"child started {delay * 1000:.0f} ms after its parent's run ended")
    assert 0 <= delay < 1.0, delay
    assert (tmp_path / "child").read_text() == "child\n", "the child ran exactly once"


def test_retries_stop_after_n_more_attempts_and_chains_follow_the_outcome(agent, tmp_path):
    create(agent, shell("always-fails", "echo nope; exit 3", retries=2, retry_backoff="100ms"))
    for status in ("success", "failure", "always"):
        create(
            agent,
            shell(
                f"on-{status}",
                f"echo $DKRON_RUN_ID >> {tmp_path / status}",
                schedule="",
                parent_job="always-fails",
                depends_on_status=status,
            ),
        )
    assert agent.get("/v1/jobs/always-fails").json()["dependent_jobs"] == ["on-always", "on-failure", "on-success"]
    assert agent.post("/v1/jobs/always-fails/run").status == 202
    agent.wait_for(lambda: (tmp_path / "failure").exists() and (tmp_path / "always").exists(), timeout=15)
    time.sleep(1.0)  # a wrong extra attempt or child would show up by now
    rows = executions(agent, "always-fails")
    assert [(e["attempt"], e["status"]) for e in rows] == [(1, "failed"), (2, "failed"), (3, "failed")], rows
    assert all(e["exit_code"] == 3 for e in rows), rows
    assert not (tmp_path / "success").exists(), "a success-only child ran after a failed run"
    assert len((tmp_path / "failure").read_text().split()) == 1
    assert len((tmp_path / "always").read_text().split()) == 1
    assert agent.get("/v1/jobs/always-fails").json()["status"] == "failed"
    # A parent with children cannot be deleted; children first, then the parent.
    refused = agent.request("DELETE", "/v1/jobs/always-fails")
    assert refused.status == 409 and "on-always" in refused.json()["error"], refused
    for name in ("on-success", "on-failure", "on-always", "always-fails"):
        assert agent.request("DELETE", f"/v1/jobs/{name}").status == 200


def test_chain_rules_cycles_and_moving_a_child(agent):
    create(agent, shell("chain-a", "true"))
    create(agent, shell("chain-b", "true", schedule="", parent_job="chain-a"))
    create(agent, shell("chain-c", "true", schedule="", parent_job="chain-b"))
    cycle = agent.post("/v1/jobs", shell("chain-a", "true", parent_job="chain-c"))
    assert cycle.status == 400 and "cycle" in cycle.json()["error"], cycle
    missing = agent.post("/v1/jobs", shell("chain-x", "true", schedule="", parent_job="no-such-job"))
    assert missing.status == 404, missing
    # Moving chain-c from chain-b to chain-a updates both parents' dependent_jobs.
    create(agent, shell("chain-c", "true", schedule="", parent_job="chain-a"))
    assert agent.get("/v1/jobs/chain-a").json()["dependent_jobs"] == ["chain-b", "chain-c"]
    assert agent.get("/v1/jobs/chain-b").json()["dependent_jobs"] is None
    bad = agent.post("/v1/jobs", shell("chain-d", "true", schedule="", parent_job="chain-a", depends_on_status="x"))
    assert bad.status == 400 and bad.json()["field"] == "depends_on_status", bad


# -- overlap -------------------------------------------------------------------------------------


def running(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in agent.get("/v1/busy").json() if e["job_name"] == name]


def test_replace_kills_the_running_execution_then_starts_and_does_not_retry_it(agent, tmp_path):
    create(agent, shell("replacer", "echo started; sleep 30", concurrency="replace", retries=2))
    first = agent.post("/v1/jobs/replacer/run").json()
    agent.wait_for(lambda: running(agent, "replacer"))
    second = agent.post("/v1/jobs/replacer/run")
    assert second.status == 202, second

    def replaced() -> dict[str, Any] | None:
        old = agent.get(f"/v1/jobs/replacer/executions/{first['execution_id']}").json()
        return old if old["status"] != "running" else None

    old = agent.wait_for(replaced, timeout=10)
    assert old["status"] == "failed" and "replaced" in (old["error"] + old["output"]), old
    now_running = agent.wait_for(lambda: running(agent, "replacer"), timeout=10)
    assert [e["run_id"] for e in now_running] == [second.json()["run_id"]], now_running
    time.sleep(1.0)  # the killed run must not come back as a retry
    rows = executions(agent, "replacer")
    assert [e["attempt"] for e in rows] == [1, 1], rows
    agent.post(f"/v1/jobs/replacer/executions/{now_running[0]['id']}/kill")
    agent.wait_for(lambda: not running(agent, "replacer"))
    time.sleep(1.0)
    assert [e["attempt"] for e in executions(agent, "replacer")] == [1, 1], "a run killed through the API was retried"


def test_forbid_refuses_a_manual_run_unless_forced(agent):
    create(agent, shell("forbidden", "sleep 30", concurrency="forbid"))
    assert agent.post("/v1/jobs/forbidden/run").status == 202
    agent.wait_for(lambda: running(agent, "forbidden"))
    assert agent.post("/v1/jobs/forbidden/run").status == 409
    assert agent.post("/v1/jobs/forbidden/run?force=true").status == 202
    assert agent.post("/v1/jobs/forbidden/run", {"force": True}).status == 202
    assert agent.post("/v1/jobs/forbidden/run?force=maybe").status == 400
    agent.wait_for(lambda: len(running(agent, "forbidden")) == 3)
    for execution in running(agent, "forbidden"):
        agent.post(f"/v1/jobs/forbidden/executions/{execution['id']}/kill")
    agent.wait_for(lambda: not running(agent, "forbidden"))


# -- time windows --------------------------------------------------------------------------------


def test_ephemeral_job_is_deleted_after_its_first_successful_run(agent, tmp_path):
    create(agent, shell("once-only", f"echo ran >> {tmp_path / 'ran'}", schedule="@every 1s", ephemeral=True))
    agent.wait_for(lambda: agent.get("/v1/jobs/once-only").status == 404, timeout=10)
    time.sleep(1.5)
    assert (tmp_path / "ran").read_text() == "ran\n"


def test_a_one_shot_submitted_slightly_late_still_runs_but_not_a_stale_one(agent, tmp_path):
    now = datetime.now(UTC)
    create(agent, shell("late-at", f"touch {tmp_path / 'late'}", schedule=f"@at {iso(now - timedelta(seconds=5))}"))
    create(agent, shell("stale-at", f"touch {tmp_path / 'stale'}", schedule=f"@at {iso(now - timedelta(minutes=5))}"))
    create(agent, shell("soon-at", f"touch {tmp_path / 'soon'}", schedule=f"@at {iso(now + timedelta(seconds=2))}"))
    agent.wait_for(lambda: (tmp_path / "late").exists() and (tmp_path / "soon").exists(), timeout=10)
    assert not (tmp_path / "stale").exists()
    assert executions(agent, "stale-at") == []
    assert agent.get("/v1/jobs/late-at").json()["success_count"] == 1


def test_starts_at_and_expires_at_bound_the_runs(agent, tmp_path):
    now = datetime.now(UTC)
    out = tmp_path / "window"
    create(
        agent,
        shell(
            "windowed",
            f"date +%s.%N >> {out}",
            schedule="@every 1s",
            starts_at=iso(now + timedelta(seconds=2)),
            expires_at=iso(now + timedelta(seconds=4.5)),
        ),
    )
    preview = agent.get("/v1/jobs/windowed/next?n=10").json()["next"]
    assert 2 <= len(preview) <= 3, preview
    assert all(now.timestamp() + 2 <= ts(p["utc"]) <= now.timestamp() + 4.5 for p in preview), preview
    time.sleep(6)
    ran = [float(x) for x in out.read_text().split()]
    assert 2 <= len(ran) <= 3, ran
    assert all(now.timestamp() + 1.9 <= t <= now.timestamp() + 7 for t in ran), (now.timestamp(), ran)


# -- spreading and the preview -------------------------------------------------------------------


def test_next_preview_in_utc_and_the_jobs_zone(agent):
    create(agent, shell("berlin", "true", schedule="0 30 9 * * *", timezone="Europe/Berlin"))
    body = agent.get("/v1/jobs/berlin/next?n=3").json()
    assert body["job"] == "berlin" and body["timezone"] == "Europe/Berlin" and len(body["next"]) == 3, body
    for item in body["next"]:
        local = datetime.fromisoformat(item["local"])
        assert (local.hour, local.minute, local.second) == (9, 30, 0), item
        assert local.timestamp() == ts(item["utc"]), item
    assert len(agent.get("/v1/jobs/berlin/next").json()["next"]) == 10  # default n
    for bad in ("0", "101", "abc", "-1"):
        answer = agent.get(f"/v1/jobs/berlin/next?n={bad}")
        assert answer.status == 400 and "error" in answer.json(), (bad, answer)
    assert agent.get("/v1/jobs/no-such-job/next").status == 404
    assert agent.get("/v1/jobs/berlin").json()["next"] == body["next"][0]["utc"]


def test_jitter_spreads_ticks_deterministically_and_runs_at_the_previewed_times(agent, tmp_path):
    create(agent, shell("spread", "true", schedule="@every 10s", jitter="8s"))
    first = agent.get("/v1/jobs/spread/next?n=20").json()["next"]
    assert agent.get("/v1/jobs/spread/next?n=20").json()["next"] == first, "the preview is stable"
    offsets = {round(ts(p["utc"]) % 10, 3) for p in first}
    assert all(0 <= o < 8 for o in offsets), offsets
    assert len(offsets) > 3, f"ticks are not spread: {offsets}"
    assert agent.request("DELETE", "/v1/jobs/spread").status == 200

    create(agent, shell("spread-fast", "true", schedule="@every 2s", jitter="1500ms"))
    preview = {p["utc"] for p in agent.get("/v1/jobs/spread-fast/next?n=10").json()["next"]}
    rows = agent.wait_for(lambda: [e for e in executions(agent, "spread-fast") if e["status"] == "success"][:3])
    assert {e["scheduled_at"] for e in rows} <= preview, (rows, preview)
    assert agent.post("/v1/jobs/spread-fast/toggle").status == 200


# -- retention and listing -----------------------------------------------------------------------


def test_executions_are_paged_server_side_with_output_size_limit(agent):
    create(agent, shell("chatty", "seq 1 1000"))
    for _ in range(3):
        assert agent.post("/v1/jobs/chatty/run?force=true").status == 202
    agent.wait_for(lambda: sum(e["status"] == "success" for e in executions(agent, "chatty")) == 3)
    page = agent.get("/v1/jobs/chatty/executions?_start=1&_end=2&output_size_limit=4")
    assert page.headers["X-Total-Count"] == "3" and len(page.json()) == 1, page
    assert page.json()[0]["output"] == "000\n" and page.json()[0]["output_truncated"] is True, page.json()


def test_a_pending_retry_dies_with_its_job(agent, tmp_path):
    create(agent, shell("doomed", "exit 1", retries=1, retry_backoff="2s"))
    assert agent.post("/v1/jobs/doomed/run").status == 202
    agent.wait_for(lambda: [e for e in executions(agent, "doomed") if e["status"] == "failed"])
    assert agent.request("DELETE", "/v1/jobs/doomed").status == 200
    create(agent, shell("doomed", f"touch {tmp_path / 'ran'}"))  # same name, a new job
    time.sleep(3)
    assert executions(agent, "doomed") == [] and not (tmp_path / "ran").exists()


def test_busy_takes_output_size_limit_too(agent):
    create(agent, shell("busy-chatty", "seq 1 100; sleep 30"))
    started = agent.post("/v1/jobs/busy-chatty/run").json()
    agent.wait_for(lambda: any("100" in e["output"] for e in running(agent, "busy-chatty")))
    limited = [e for e in agent.get("/v1/busy?output_size_limit=4").json() if e["job_name"] == "busy-chatty"]
    assert limited[0]["output"] == "100\n" and limited[0]["output_truncated"] is True, limited
    assert agent.get("/v1/busy?output_size_limit=x").status == 400
    agent.post(f"/v1/jobs/busy-chatty/executions/{started['execution_id']}/kill")
    agent.wait_for(lambda: not running(agent, "busy-chatty"))


def test_retention_by_age(agent_factory, tmp_path):
    short = agent_factory(tmp_path / "aged", extra_args=("--retention-age", "2s")).start()
    create(short, shell("aging", "true", schedule="@every 1s"))
    short.wait_for(lambda: short.get("/v1/jobs/aging").json()["success_count"] >= 5, timeout=15)
    rows = executions(short, "aging")
    newest = max(ts(e["started_at"]) for e in rows)
    assert all(newest - ts(e["started_at"]) <= 3.5 for e in rows), [e["started_at"] for e in rows]
    assert len(rows) <= 4, rows


def test_pending_retries_are_listed_and_wait_while_scheduling_is_paused(agent, tmp_path):
    create(agent, shell("paused-retry", flaky(tmp_path / "n", 2), retries=1, retry_backoff="200ms"))
    assert agent.post("/v1/pause?scheduling=true").json()["scheduling_paused"] is True
    try:
        run_id = agent.post("/v1/jobs/paused-retry/run").json()["run_id"]  # manual runs still work
        pending = agent.wait_for(lambda: agent.get("/v1/jobs/paused-retry/next").json()["pending"])
        assert [(p["kind"], p["run_id"], p["attempt"]) for p in pending] == [("retry", run_id, 2)], pending
        time.sleep(1.5)
        assert [e["attempt"] for e in executions(agent, "paused-retry")] == [1], "a retry ran while paused"
    finally:
        assert agent.post("/v1/unpause?scheduling=true").json()["scheduling_paused"] is False
    agent.wait_for(lambda: [e for e in executions(agent, "paused-retry") if e["status"] == "success"])
    assert [e["attempt"] for e in executions(agent, "paused-retry")] == [1, 2]
    assert agent.get("/v1/jobs/paused-retry/next").json()["pending"] == []


def test_hashed_fields_spread_jobs_by_name_in_the_preview(agent):
    seconds = set()
    for name in ("hash-a", "hash-b", "hash-c"):
        create(agent, shell(name, "true", schedule="H H * * * *"))
        preview = agent.get(f"/v1/jobs/{name}/next?n=2").json()["next"]
        first, second = (datetime.fromisoformat(p["local"]) for p in preview)
        assert second - first == timedelta(hours=1), preview  # hashed second and minute, every hour
        seconds.add((first.minute, first.second))
        assert agent.get(f"/v1/jobs/{name}/next?n=2").json()["next"] == preview, "stable per job name"
    assert len(seconds) == 3, seconds


def test_a_dependent_run_outside_the_childs_window_is_skipped_and_recorded(agent):
    create(agent, shell("window-parent", "true"))
    past = iso(datetime.now(UTC) - timedelta(minutes=1))
    create(agent, shell("window-child", "true", schedule="", parent_job="window-parent", expires_at=past))
    assert agent.post("/v1/jobs/window-parent/run").status == 202
    rows = agent.wait_for(lambda: executions(agent, "window-child"))
    assert rows[0]["status"] == "skipped" and "expired" in rows[0]["error"], rows
    assert agent.get("/v1/jobs/window-child").json()["skipped_count"] == 1
