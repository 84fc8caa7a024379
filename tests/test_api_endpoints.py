"""The REST API against a real agent: listing, updating, running, killing, pausing, restoring.

One agent is shared by the module (tests use their own job names; listing tests filter on their
own ``metadata[suite]``). Restart and restore-into-an-empty-cluster tests start their own agents.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dkron.testing import AgentProcess

USER_FIELDS = (
    "name",
    "displayname",
    "timezone",
    "schedule",
    "owner",
    "owner_email",
    "disabled",
    "tags",
    "metadata",
    "retries",
    "parent_job",
    "processors",
    "concurrency",
    "executor",
    "executor_config",
    "ephemeral",
    "starts_at",
    "expires_at",
)


def shell(name: str, command: str, schedule: str = "@manually", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": schedule,
        "executor": "shell",
        "executor_config": {"command": command, "shell": True},
        **fields,
    }


def settle(agent: AgentProcess) -> None:
    """Wait until nothing runs and the last results are committed (a clean, fast stop)."""
    agent.wait_for(lambda: not agent.get("/v1/busy").json(), timeout=20)
    time.sleep(0.3)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    # Tagged so that jobs targeting role=x run here (tags select nodes, as in Dkron).
    node = AgentProcess(tmp_path_factory.mktemp("endpoints") / "data", extra_args=("--tag", "role=x")).start()
    try:
        yield node
    finally:
        try:
            settle(node)
        finally:
            node.stop(timeout=15)


def create(agent: AgentProcess, job: dict[str, Any], query: str = "") -> dict[str, Any]:
    res = agent.post(f"/v1/jobs{query}", job)
    assert res.status == 201, res
    return res.json()


def names(res: Any) -> list[str]:
    return [job["name"] for job in res.json()]


# -- listing: paging, sorting, filtering --------------------------------------------------------------
LISTED = {
    "list-alpha": {"displayname": "Zebra report", "schedule": "@every 1h", "runs": ["true", "true"]},
    "list-bravo": {"displayname": "apple Sync", "schedule": "0 0 3 * * *", "disabled": True, "runs": ["false"]},
    "list-charlie": {"displayname": "", "schedule": "@manually", "runs": []},
    "list-delta": {"displayname": "Mango", "schedule": "@every 2h", "team": "ops", "runs": ["true", "false"]},
    "list-echo": {"displayname": "Backup NIGHTLY", "schedule": "@daily", "team": "ops", "runs": ["true"] * 3},
}
SUITE = "metadata[suite]=list"


@pytest.fixture(scope="module")
def listed(agent: AgentProcess) -> dict[str, Any]:
    for name, spec in LISTED.items():
        metadata = {"suite": "list", **({"team": spec["team"]} if "team" in spec else {})}
        job = shell(name, "true", spec["schedule"], displayname=spec["displayname"], metadata=metadata)
        create(agent, job)
        for command in spec["runs"]:  # each run with its own command: successes and failures
            create(agent, {**job, "executor_config": {"command": command}})
            agent.run_and_wait(name)
        if spec.get("disabled"):
            create(agent, {**job, "disabled": True})
    return {job["name"]: job for job in agent.get(f"/v1/jobs?{SUITE}").json()}


def test_the_listing_fixture_has_the_counters_it_needs(listed):
    assert {n: (j["success_count"], j["error_count"], j["status"]) for n, j in listed.items()} == {
        "list-alpha": (2, 0, "success"),
        "list-bravo": (0, 1, "failed"),
        "list-charlie": (0, 0, ""),
        "list-delta": (1, 1, "failed"),
        "list-echo": (3, 0, "success"),
    }


def test_jobs_are_listed_by_name_by_default_with_the_total(agent, listed):
    res = agent.get(f"/v1/jobs?{SUITE}")
    assert names(res) == sorted(LISTED)
    assert res.headers["X-Total-Count"] == "5"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("_start=1&_end=3", ["list-bravo", "list-charlie"]),
        ("_start=0&_end=1", ["list-alpha"]),
        ("_start=4&_end=10", ["list-echo"]),
        ("_start=3", ["list-delta", "list-echo"]),
        ("_end=2", ["list-alpha", "list-bravo"]),
        ("_start=10", []),
        ("_start=2&_end=2", []),
        ("_start=1&_end=3&_sort=name&_order=DESC", ["list-delta", "list-charlie"]),
    ],
)
def test_paging_slices_and_the_total_counts_before_slicing(agent, listed, query, expected):
    res = agent.get(f"/v1/jobs?{SUITE}&{query}")
    assert names(res) == expected
    assert res.headers["X-Total-Count"] == "5"


SORTABLE = [
    "id",
    "name",
    "displayname",
    "schedule",
    "success_count",
    "error_count",
    "last_success",
    "last_error",
    "next",
    "status",
]


@pytest.mark.parametrize("field", SORTABLE)
def test_each_sortable_field_sorts_both_ways(agent, listed, field):
    column = "name" if field == "id" else field
    asc = agent.get(f"/v1/jobs?{SUITE}&_sort={field}&_order=ASC").json()
    keys = [(job[column] is not None, job[column], job["name"]) for job in asc]  # nulls first, ties by name
    assert keys == sorted(keys), f"not sorted by {field}: {[(k[1], k[2]) for k in keys]}"
    assert len({k[1] for k in keys}) > 1, f"the fixture does not vary {field}"
    desc = agent.get(f"/v1/jobs?{SUITE}&_sort={field}&_order=desc").json()
    assert [j["name"] for j in desc] == [j["name"] for j in reversed(asc)]


def test_sorting_by_success_count_then_paging(agent, listed):
    res = agent.get(f"/v1/jobs?{SUITE}&_sort=success_count&_order=DESC&_start=0&_end=2")
    assert names(res) == ["list-echo", "list-alpha"]
    assert res.headers["X-Total-Count"] == "5"


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("NIGHT", ["list-echo"]),  # displayname, other case
        ("ALPHA", ["list-alpha"]),  # name, other case
        ("apple", ["list-bravo"]),
        ("mAnGo", ["list-delta"]),
        ("list-", sorted(LISTED)),
        ("%", []),  # LIKE wildcards are literal
        ("_", []),
        ("zzz", []),
    ],
)
def test_q_searches_name_and_displayname_case_insensitively(agent, listed, q, expected):
    res = agent.get(f"/v1/jobs?{SUITE}&q={q.replace('%', '%25')}")
    assert names(res) == expected
    assert res.headers["X-Total-Count"] == str(len(expected))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=success", ["list-alpha", "list-echo"]),
        ("status=failed", ["list-bravo", "list-delta"]),
        ("status=untriggered", ["list-charlie"]),
        ("disabled=true", ["list-bravo"]),
        ("disabled=FALSE", ["list-alpha", "list-charlie", "list-delta", "list-echo"]),
        ("metadata[team]=ops", ["list-delta", "list-echo"]),
        ("metadata[team]=ops&status=success", ["list-echo"]),
        ("metadata[team]=nobody", []),
        ("status=failed&disabled=false&q=mango", ["list-delta"]),
    ],
)
def test_filters_combine_with_and(agent, listed, query, expected):
    res = agent.get(f"/v1/jobs?{SUITE}&{query}")
    assert names(res) == expected
    assert res.headers["X-Total-Count"] == str(len(expected))


def test_the_total_is_the_filtered_count_before_slicing(agent, listed):
    res = agent.get(f"/v1/jobs?{SUITE}&status=success&_start=0&_end=1")
    assert names(res) == ["list-alpha"]
    assert res.headers["X-Total-Count"] == "2"


def test_a_listed_job_shows_its_computed_fields(agent, listed):
    alpha, bravo, charlie = listed["list-alpha"], listed["list-bravo"], listed["list-charlie"]
    assert alpha["id"] == "list-alpha" and alpha["last_success"] and alpha["last_error"] is None
    assert alpha["next"] and alpha["next"] > alpha["last_success"]
    assert bravo["next"] is None  # disabled
    assert charlie["next"] is None and charlie["last_success"] is None  # @manually, never ran


# -- create, update, toggle, delete --------------------------------------------------------------------
def test_create_answers_201_with_the_stored_job_and_its_location(agent):
    res = agent.post("/v1/jobs", shell("created", "true", "@every 1h", displayname="Created"))
    assert res.status == 201 and res.headers["Location"] == "/v1/jobs/created"
    body = res.json()
    assert body["concurrency"] == "allow" and body["status"] == "" and body["success_count"] == 0
    assert body["executor_config"] == {"command": "true", "shell": "true"}  # coerced to strings
    assert agent.get(res.headers["Location"]).json() == body


def test_patch_and_put_replace_the_whole_job_but_keep_its_counters(agent):
    create(agent, shell("upd", "true", "@every 1h", displayname="First", metadata={"k": "v"}, retries=2))
    agent.run_and_wait("upd")
    before = agent.get("/v1/jobs/upd").json()
    res = agent.request("PATCH", "/v1/jobs", shell("upd", "true", "@every 2h", owner="ops"))
    assert res.status == 201 and res.headers["Location"] == "/v1/jobs/upd"
    after = agent.get("/v1/jobs/upd").json()
    assert (after["schedule"], after["owner"]) == ("@every 2h", "ops")
    assert (after["displayname"], after["metadata"], after["retries"]) == ("", {}, 0)  # a replace, not a merge
    assert after["success_count"] == 1 and after["last_success"] == before["last_success"]
    assert after["created_at"] == before["created_at"] and after["updated_at"] > before["updated_at"]
    body = {k: v for k, v in shell("upd", "true", "@every 3h").items() if k != "name"}  # the URL names it
    res = agent.request("PUT", "/v1/jobs/upd", body)
    assert res.status == 201 and res.headers["Location"] == "/v1/jobs/upd"
    assert agent.get("/v1/jobs/upd").json()["schedule"] == "@every 3h"
    assert agent.get("/v1/jobs/upd").json()["success_count"] == 1


def test_put_creates_a_job_that_does_not_exist(agent):
    body = {k: v for k, v in shell("put-new", "true").items() if k != "name"}
    res = agent.request("PUT", "/v1/jobs/put-new", body)
    assert res.status == 201 and res.json()["name"] == "put-new"


def test_a_get_answer_can_be_posted_back_unchanged(agent):
    create(agent, shell("echoed", "true", "@every 1h", tags={"role": "x"}))
    agent.run_and_wait("echoed")
    stored = agent.get("/v1/jobs/echoed").json()
    res = agent.post("/v1/jobs", stored)
    assert res.status == 201, res
    again = res.json()
    assert {k: again[k] for k in USER_FIELDS} == {k: stored[k] for k in USER_FIELDS}
    assert again["success_count"] == 1  # the counters sent back were ignored, the stored ones kept


def test_toggle_flips_disabled_and_a_disabled_job_does_not_run(agent, tmp_path):
    out = tmp_path / "ticks"
    create(agent, shell("toggled", f"echo x >> {out}", "@every 1s"))
    agent.wait_for(lambda: out.exists())
    res = agent.post("/v1/jobs/toggled/toggle")
    assert res.status == 200 and res.headers["Location"] == "/v1/jobs/toggled"
    assert res.json()["disabled"] is True and res.json()["next"] is None
    assert agent.get("/v1/jobs/toggled").json()["disabled"] is True
    settle(agent)
    lines = out.read_text().count("x")
    time.sleep(1.6)
    assert out.read_text().count("x") == lines, "a disabled job ran"
    res = agent.post("/v1/jobs/toggled/toggle")
    assert res.json()["disabled"] is False and res.json()["next"] is not None
    agent.wait_for(lambda: out.read_text().count("x") > lines, timeout=5)
    assert agent.request("DELETE", "/v1/jobs/toggled").status == 200
    settle(agent)


def test_delete_answers_the_deleted_job_and_removes_its_history(agent):
    create(agent, shell("doomed", "echo bye"))
    agent.run_and_wait("doomed")
    res = agent.request("DELETE", "/v1/jobs/doomed")
    assert res.status == 200
    assert res.json()["name"] == "doomed" and res.json()["success_count"] == 1
    assert agent.get("/v1/jobs/doomed").status == 404
    assert agent.get("/v1/jobs/doomed/executions").status == 404
    create(agent, shell("doomed", "echo bye"))  # the same name again starts from nothing
    assert agent.get("/v1/jobs/doomed").json()["success_count"] == 0
    assert agent.get("/v1/jobs/doomed/executions").json() == []


def test_children_list_in_dependent_jobs_and_can_be_deleted_before_the_parent(agent):
    create(agent, shell("family", "true"))
    create(agent, {**shell("family-kid", "true", ""), "parent_job": "family"})
    assert agent.get("/v1/jobs/family").json()["dependent_jobs"] == ["family-kid"]
    assert agent.request("DELETE", "/v1/jobs/family").status == 409
    assert agent.request("DELETE", "/v1/jobs/family-kid").status == 200
    assert agent.get("/v1/jobs/family").json()["dependent_jobs"] is None
    assert agent.request("DELETE", "/v1/jobs/family").status == 200


# -- runs and executions ---------------------------------------------------------------------------------
def test_run_answers_202_with_a_location_to_the_new_execution(agent):
    create(agent, shell("runner", "echo ran"))
    res = agent.post("/v1/jobs/runner")  # Dkron's short form
    assert res.status == 202
    body = res.json()
    assert body["name"] == "runner" and body["execution_id"] and body["run_id"].startswith("runner@")
    assert res.headers["Location"] == f"/v1/jobs/runner/executions/{body['execution_id']}"
    assert agent.get(res.headers["Location"]).status == 200
    done = agent.wait_finished("runner", body["execution_id"])
    assert done["status"] == "success" and done["output"] == "ran\n" and done["kind"] == "manual"


def test_runoncreate_runs_the_new_job_at_once(agent):
    res = agent.post("/v1/jobs?runoncreate", shell("eager", "echo created"))
    assert res.status == 201 and res.headers["Location"] == "/v1/jobs/eager"
    done = agent.wait_finished("eager", res.json()["execution_id"])
    assert done["output"] == "created\n" and done["success"] is True


def test_executions_are_paged_and_sorted_in_the_store(agent):
    create(agent, shell("pager", "echo $DKRON_EXECUTION_ID"))
    ids = [agent.run_and_wait("pager")["id"] for _ in range(3)]
    res = agent.get("/v1/jobs/pager/executions")
    assert [e["id"] for e in res.json()] == ids[::-1]  # newest first
    assert res.headers["X-Total-Count"] == "3"
    assert [e["output"].strip() for e in res.json()] == ids[::-1]
    page = agent.get("/v1/jobs/pager/executions?_start=0&_end=2")
    assert [e["id"] for e in page.json()] == ids[:0:-1] and page.headers["X-Total-Count"] == "3"
    assert [e["id"] for e in agent.get("/v1/jobs/pager/executions?_start=2").json()] == ids[:1]
    asc = agent.get("/v1/jobs/pager/executions?_sort=started_at&_order=asc").json()
    assert [e["id"] for e in asc] == ids


def test_output_size_limit_keeps_the_tail_and_flags_it(agent):
    create(agent, shell("chatty", "seq 1 1000"))
    full = agent.run_and_wait("chatty")["output"]
    assert full.endswith("999\n1000\n") and full.startswith("1\n2\n")

    def listed(query: str) -> dict[str, Any]:
        return agent.get(f"/v1/jobs/chatty/executions?{query}").json()[0]

    assert listed("output_size_limit=9") == {**listed(""), "output": "999\n1000\n", "output_truncated": True}
    assert listed("output_size_limit=0")["output"] == "" and listed("output_size_limit=0")["output_truncated"]
    assert listed("output_size_limit=100000")["output"] == full
    assert listed("output_size_limit=100000")["output_truncated"] is False
    assert listed("output_size_limit=-1")["output"] == full
    assert listed("")["output"] == full and listed("")["output_truncated"] is False


def test_deleting_executions_resets_the_counters_and_keeps_the_status(agent, tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    create(agent, shell("counted", f"test -e {flag}"))
    assert agent.run_and_wait("counted")["status"] == "success"
    flag.unlink()
    assert agent.run_and_wait("counted")["status"] == "failed"
    job = agent.get("/v1/jobs/counted").json()
    assert (job["success_count"], job["error_count"], job["status"]) == (1, 1, "failed")
    res = agent.request("DELETE", "/v1/jobs/counted/executions")
    assert res.status == 200
    body = res.json()
    assert (body["success_count"], body["error_count"], body["last_success"], body["last_error"]) == (0, 0, None, None)
    assert body["status"] == "failed"
    listing = agent.get("/v1/jobs/counted/executions")
    assert listing.json() == [] and listing.headers["X-Total-Count"] == "0"
    assert agent.get("/v1/jobs/counted").json() == body


def test_busy_lists_a_running_job_and_kill_stops_it(agent):
    create(agent, shell("sleepy", "echo started; sleep 30"))
    started = agent.post("/v1/jobs/sleepy/run").json()
    busy = agent.wait_for(lambda: (r := agent.get("/v1/busy")).json() and r)
    assert busy.headers["X-Total-Count"] == "1"
    [execution] = busy.json()
    assert (execution["id"], execution["job_name"], execution["status"]) == (
        started["execution_id"],
        "sleepy",
        "running",
    )
    assert execution["finished_at"] is None
    agent.wait_for(lambda: "started" in agent.get("/v1/busy").json()[0]["output"])  # live output
    began = time.monotonic()
    res = agent.post(f"/v1/jobs/sleepy/executions/{started['execution_id']}/kill")
    assert res.status == 202 and res.json() == {"killed": True, "id": started["execution_id"], "job_name": "sleepy"}
    done = agent.wait_finished("sleepy", started["execution_id"], timeout=5)
    assert time.monotonic() - began < 4
    assert done["status"] == "failed" and "killed" in done["error"]
    assert "started" in done["output"]
    assert agent.get("/v1/busy").json() == []
    assert agent.post(f"/v1/jobs/sleepy/executions/{started['execution_id']}/kill").status == 404


def test_kill_only_reaches_executions_of_the_named_job(agent):
    create(agent, shell("target", "sleep 30"))
    create(agent, shell("bystander", "true"))
    started = agent.post("/v1/jobs/target/run").json()
    agent.wait_for(lambda: agent.get("/v1/busy").json())
    assert agent.post(f"/v1/jobs/bystander/executions/{started['execution_id']}/kill").status == 404
    assert agent.get(f"/v1/jobs/bystander/executions/{started['execution_id']}").status == 404
    assert agent.get("/v1/busy").json()[0]["id"] == started["execution_id"]  # still running
    assert agent.post(f"/v1/jobs/target/executions/{started['execution_id']}/kill").status == 202
    assert agent.wait_finished("target", started["execution_id"], timeout=5)["status"] == "failed"


def test_forbid_refuses_a_second_run_while_one_runs(agent):
    create(agent, shell("single", "sleep 30", concurrency="forbid"))
    started = agent.post("/v1/jobs/single/run").json()
    agent.wait_for(lambda: agent.get("/v1/busy").json())
    res = agent.post("/v1/jobs/single/run")
    assert res.status == 409 and "forbid" in res.json()["error"]
    res = agent.post("/v1/jobs?runoncreate", shell("single", "sleep 30", concurrency="forbid", owner="new"))
    assert res.status == 409 and "saved but not run" in res.json()["error"]
    assert agent.get("/v1/jobs/single").json()["owner"] == "new"
    agent.post(f"/v1/jobs/single/executions/{started['execution_id']}/kill")
    agent.wait_finished("single", started["execution_id"], timeout=5)


# -- pause ---------------------------------------------------------------------------------------------
def test_pause_refuses_submissions_but_not_runs_toggles_or_deletes(agent):
    create(agent, shell("while-paused", "echo still"))
    try:
        res = agent.post("/v1/pause")
        assert res.status == 200 and res.json() == {"paused": True, "scheduling_paused": False}
        assert agent.get("/v1/pause").json()["paused"] is True
        total = agent.get("/v1/jobs").headers["X-Total-Count"]
        for method, path in [("POST", "/v1/jobs"), ("PATCH", "/v1/jobs"), ("PUT", "/v1/jobs/refused")]:
            res = agent.request(method, path, shell("refused", "true"))
            assert res.status == 503 and "paused" in res.json()["error"]
        assert agent.get("/v1/jobs").headers["X-Total-Count"] == total
        assert agent.get("/v1/jobs/refused").status == 404
        assert agent.run_and_wait("while-paused")["output"] == "still\n"
        assert agent.post("/v1/jobs/while-paused/toggle").status == 200
    finally:
        res = agent.post("/v1/unpause")
    assert res.status == 200 and res.json() == {"paused": False, "scheduling_paused": False}
    assert agent.post("/v1/jobs", shell("refused", "true")).status == 201


def test_scheduling_pause_stops_scheduled_runs_and_survives_a_restart(agent_factory, tmp_path):
    out = tmp_path / "ticks"
    first = agent_factory().start()
    create(first, shell("ticker", f"echo x >> {out}", "@every 1s"))
    first.wait_for(lambda: out.exists())
    res = first.post("/v1/pause?scheduling=true")
    assert res.json() == {"paused": True, "scheduling_paused": True}
    res = first.post("/v1/unpause")  # submissions again; scheduling stays paused
    assert res.json() == {"paused": False, "scheduling_paused": True}
    assert first.get("/v1").json()["scheduling_paused"] is True
    # Launches the leader committed before the pause (it plans 1 s ahead) may still start.
    time.sleep(1.2)
    settle(first)
    ticks = out.read_text().count("x")
    time.sleep(1.5)
    assert out.read_text().count("x") == ticks, "a scheduled run started while scheduling was paused"
    assert first.run_and_wait("ticker")["status"] == "success"  # manual runs still work
    ticks += 1
    settle(first)
    assert first.stop() == 0

    second = agent_factory(first.data_dir, http_port=first.http_port, raft_port=first.raft_port).start()
    assert second.get("/v1/pause").json() == {"paused": False, "scheduling_paused": True}
    settle(second)
    catch_up_runs = out.read_text().count("x") - ticks  # see the xfail below
    ticks += catch_up_runs
    time.sleep(1.5)
    assert out.read_text().count("x") == ticks, "scheduling resumed by itself after the restart"
    res = second.post("/v1/unpause?scheduling=true")
    assert res.json() == {"paused": False, "scheduling_paused": False}
    second.wait_for(lambda: out.read_text().count("x") > ticks, timeout=5)
    second.post("/v1/pause?scheduling=true")  # stop ticking so the teardown stop is clean
    time.sleep(1.2)
    settle(second)
    if catch_up_runs:
        pytest.xfail(
            "known bug: at start the new leader commits a catch-up run for ticks that passed while scheduling "
            "was paused (scheduler.py Scheduler._become_leader ignores self.paused)"
        )


# -- cluster endpoints -----------------------------------------------------------------------------------
def test_leader_isleader_and_members_describe_the_single_node(agent):
    leader = agent.get("/v1/leader")
    assert leader.status == 200
    assert leader.json()["Name"] == "node1" and leader.json()["leader"] is True
    res = agent.get("/v1/isleader")
    assert (res.status, res.json()) == (200, "I am a leader")
    members = agent.get("/v1/members")
    assert members.headers["X-Total-Count"] == "1"
    [member] = members.json()
    assert member["Name"] == "node1" and member["statusText"] == "alive"
    assert member["Tags"]["role"] == "x"  # the node's own tag, not hijacked to "dkron" as Dkron does
    assert member == leader.json()


def test_index_shows_the_agent_and_warns_that_acls_are_off(agent):
    body = agent.get("/v1").json()
    assert body["agent"]["name"] == "node1" and body["agent"]["server"] is True
    assert body["acl"]["enabled"] is False
    assert "ACLs are off" in body["acl"]["warning"] and "run commands" in body["acl"]["warning"]
    assert body["raft"]["has_quorum"] is True
    assert agent.get("/v1/").json()["agent"] == body["agent"]


def test_health_is_ok_on_a_node_with_a_leader(agent):
    res = agent.get("/health")
    assert res.status == 200 and res.json()["status"] == "healthy" and res.json()["node"] == "node1"


def test_plugins_lists_the_shell_executor_without_error(agent):
    plugins = {p["name"]: p for p in agent.get("/v1/plugins").json()}
    assert plugins["shell"]["executors"] == ["shell"] and plugins["shell"]["error"] is None
    assert plugins["shell"]["distribution"] == "dkron-executor-shell"
    assert plugins["log"]["processors"] == ["log"] and plugins["log"]["error"] is None


def test_pretty_indents_any_json_answer(agent):
    for path in ["/v1/jobs?pretty", "/v1/pause?pretty=1", "/v1/jobs/nope?pretty"]:
        res = agent.get(path)
        plain = agent.get(path.replace("pretty", "plain"))
        assert b"\n  " in res.body or res.body.strip() == b"[]"
        assert res.json() == plain.json() and res.status == plain.status
    assert b"\n  " in agent.get("/v1?pretty").body and b"\n" not in agent.get("/v1").body


def test_every_answer_says_which_node_answered(agent):
    for method, path in [("GET", "/v1/jobs"), ("GET", "/v1/jobs/nope"), ("DELETE", "/v1/busy"), ("GET", "/ui/")]:
        assert agent.request(method, path).headers["X-Whom"] == "node1"


def test_the_ui_is_served_and_the_root_redirects_to_it(agent):
    res = agent.get("/")  # urllib follows the 303
    assert res.status == 200 and res.headers["Content-Type"].startswith("text/html")
    assert b"Dkron" in res.body


# -- restore ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backup(agent: AgentProcess) -> list[dict[str, Any]]:
    """A ``GET /v1/jobs`` export using every field, with a parent -> child -> grandchild chain."""
    full = {
        "displayname": "Nightly report",
        "timezone": "Europe/Madrid",
        "owner": "ops",
        "owner_email": "ops@example.com",
        "tags": {"role": "x:2"},
        "metadata": {"suite": "rt", "team": "ops"},
        "retries": 2,
        "processors": {"log": {"forward": "true"}},
        "concurrency": "forbid",
        "executor": "shell",
        "executor_config": {"command": "echo report", "shell": "true", "timeout": "30s", "env": "A=1,B=2"},
        "starts_at": "2020-01-02T03:04:05.000Z",
        "expires_at": "2999-01-01T00:00:00.000Z",
    }
    create(agent, {"name": "rt-parent", "schedule": "0 30 2 * * *", **full})
    agent.run_and_wait("rt-parent")
    create(agent, {"name": "rt-child", "parent_job": "rt-parent", "disabled": True, **full})
    create(agent, {"name": "rt-grandchild", "parent_job": "rt-child", "ephemeral": True, **full})
    export = agent.get("/v1/jobs?metadata[suite]=rt").json()
    assert [j["name"] for j in export] == ["rt-child", "rt-grandchild", "rt-parent"]
    assert export[2]["success_count"] == 1
    return sorted(export, key=lambda j: j["name"] != "rt-grandchild")  # a child before its parents


def check_restored(target: AgentProcess, backup: list[dict[str, Any]], answer: Any) -> None:
    assert answer.status == 200, answer
    assert answer.json() == {
        "restored": 3,
        "jobs": [{"name": n, "result": "created"} for n in ["rt-parent", "rt-child", "rt-grandchild"]],
    }
    restored = {job["name"]: job for job in target.get("/v1/jobs").json()}
    assert set(restored) == {"rt-parent", "rt-child", "rt-grandchild"}
    for job in backup:
        got = restored[job["name"]]
        assert {k: got[k] for k in USER_FIELDS} == {k: job[k] for k in USER_FIELDS}
        assert got["dependent_jobs"] == job["dependent_jobs"] and got["id"] == job["id"]
        # The history a backup carries is kept, as Dkron does (max-merged with what is stored).
        for key in ("success_count", "error_count", "last_success", "last_error", "status"):
            assert got[key] == job[key], key
    assert restored["rt-parent"]["dependent_jobs"] == ["rt-child"]
    assert restored["rt-parent"]["next"] is not None


def test_restore_a_json_backup_into_an_empty_cluster(agent_factory, backup):
    target = agent_factory().start()
    check_restored(target, backup, target.post("/v1/restore", backup))


def test_restore_a_multipart_upload_like_dkron_ui_sends(agent_factory, backup):
    target = agent_factory().start()
    boundary = "----dkron-test-boundary-7MA4YWxkTrZu0gW"
    raw = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="dkron-backup.json"\r\n'
            "Content-Type: application/json\r\n\r\n"
        ).encode()
        + json.dumps(backup).encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    check_restored(target, backup, target.request("POST", "/v1/restore", raw=raw, headers=headers))


def test_restore_over_existing_jobs_updates_them(agent, backup):
    changed = [{**job, "displayname": "Restored"} for job in backup]
    res = agent.post("/v1/restore", changed)
    assert res.status == 200 and res.json()["restored"] == 3
    jobs = agent.get("/v1/jobs?metadata[suite]=rt").json()
    assert {j["displayname"] for j in jobs} == {"Restored"}
    assert {j["name"]: j["success_count"] for j in jobs}["rt-parent"] == 1  # counters kept
