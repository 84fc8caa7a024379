"""A real cluster: 3 servers (Raft) + 2 tagged agents, as separate processes on 127.0.0.1.

One cluster is shared by the whole module (starting 5 Python processes costs ~15 s on a
2-core machine); the ``healthy`` fixture restarts or thaws whatever an earlier test left
down, and the destructive tests (leave, remove-peer) come last. Every job has its own name
and is deleted by its test. Every wait is bounded; every assertion is about what a user sees
(HTTP API, ``dkron`` CLI output and exit codes, files written by jobs).

Agents: ``a1`` (pool=web, zone=a) and ``a2`` (pool=web, zone=b).
"""

from __future__ import annotations

import collections
import itertools
import random
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dkron.localcluster import LocalCluster, Node, dkron_cli, parse_peers, wait_for

pytestmark = pytest.mark.slow

#: Measurements printed by the tests (run with ``-s`` to see them).
MEASURED: dict[str, float] = {}


def ts(value: str | None) -> float:
    """An API timestamp (RFC 3339, ms) as epoch seconds."""
    assert value, "missing timestamp"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


RAN = ("running", "success", "failed", "lost")  # statuses of executions that really started


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    started = time.monotonic()
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
        c.start(timeout=120)
        MEASURED["cluster_start_s"] = time.monotonic() - started
        print(f"\ncluster of 3 servers + 2 agents ready in {MEASURED['cluster_start_s']:.1f}s")
        yield c
    if MEASURED:
        print("\nmeasurements:", {k: round(v, 2) for k, v in MEASURED.items()})


@pytest.fixture
def healthy(cluster: LocalCluster) -> LocalCluster:
    """The shared cluster with every node that should be up running again and agreed."""
    cluster.heal(timeout=90)
    return cluster


def peers_via(server: Node) -> list[dict[str, str]]:
    done = dkron_cli("raft", "list-peers", "--rpc-addr", server.rpc_addr)
    assert done.returncode == 0, done.stderr
    return parse_peers(done.stdout)


def wait_peers(server: Node, count: int, timeout: float) -> list[dict[str, str]]:
    """``dkron raft list-peers`` via ``server`` once it shows ``count`` peers, all alive."""

    def check() -> list[dict[str, str]] | None:
        peers = peers_via(server)
        return peers if len(peers) == count and {p["status"] for p in peers} == {"alive"} else None

    return wait_for(check, timeout, f"{count} alive peers in list-peers via {server.name}")


def by_run(executions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for ex in executions:
        runs[ex["run_id"]].append(ex)
    return runs


def execution(c: LocalCluster, job: str, execution_id: str, via: Node | None = None) -> dict[str, Any] | None:
    answer = (via or c.api()).get(f"/v1/jobs/{job}/executions/{execution_id}")
    return answer.json() if answer.status == 200 else None


def ended(c: LocalCluster, job: str, execution_id: str, via: Node | None = None) -> dict[str, Any] | None:
    """The execution once it is no longer running (None before)."""
    ex = execution(c, job, execution_id, via)
    return ex if ex and ex["status"] != "running" else None


# -- 1. leader agreement, members, raft peers -----------------------------------------------------


def test_leader_agreement_members_and_peers(healthy: LocalCluster) -> None:
    """Every server names the same leader in /v1/leader, /v1/members and `raft list-peers`.

    The answers are read one after the other, so they are compared again if the leader changed
    while they were read (an election right after the cluster formed was seen in CI: pysyncobj
    has no PreVote). A disagreement with a stable leader fails at once."""
    c = healthy
    for attempt in range(3):
        names = c.leader_names()
        try:
            _check_agreement(c, names)
            return
        except AssertionError:
            if attempt == 2 or c.leader_names() == names:
                raise
            time.sleep(1.0)  # let the election settle


def _check_agreement(c: LocalCluster, names: dict[str, str | None]) -> None:
    assert len(names) == 3 and len(set(names.values())) == 1 and None not in names.values(), names
    leader = next(iter(names.values()))

    everyone = {"s1", "s2", "s3", "a1", "a2"}
    for server in c.servers:
        # A follower shows the registered view, committed through Raft. An agent whose first
        # registration fell into an election right after the cluster formed is committed when
        # it registers again with the new leader, a heartbeat later (seen in CI).
        members = wait_for(
            lambda server=server: m if set(m := c.members(server)) == everyone else None,
            10,
            f"every node in the members of {server.name}",
        )
        assert {m["statusText"] for m in members.values()} == {"alive"}, (server.name, members)
        for name in ("s1", "s2", "s3"):
            assert members[name]["Tags"]["server"] == "true"
        assert members["a1"]["Tags"]["server"] == "false"
        assert (members["a1"]["Tags"]["pool"], members["a1"]["Tags"]["zone"]) == ("web", "a")
        assert (members["a2"]["Tags"]["pool"], members["a2"]["Tags"]["zone"]) == ("web", "b")
        assert [n for n, m in members.items() if m.get("leader")] == [leader], (server.name, members)

    for server in c.servers:
        peers = peers_via(server)
        assert sorted(p["node"] for p in peers) == ["s1", "s2", "s3"], peers
        assert [p["node"] for p in peers if p["state"] == "leader"] == [leader], (server.name, peers)
        assert {p["status"] for p in peers} == {"alive"}, peers


# -- 2. writes through any server -----------------------------------------------------------------


def test_writes_through_a_follower_are_readable_at_once(healthy: LocalCluster) -> None:
    c = healthy
    follower = c.followers()[0]
    names = [f"rw-{i}" for i in range(5)]
    try:
        for name in names:
            created = follower.post(
                "/v1/jobs",
                {"name": name, "schedule": "@manually", "executor": "shell", "executor_config": {"command": "true"}},
            )
            assert created.status == 201, created
            read = follower.get(f"/v1/jobs/{name}")
            assert read.status == 200, f"GET on {follower.name} right after its 201: {read}"
            updated = follower.post(
                "/v1/jobs",
                {
                    "name": name,
                    "displayname": f"v2 {name}",
                    "schedule": "@manually",
                    "executor": "shell",
                    "executor_config": {"command": "true"},
                },
            )
            assert updated.status == 201, updated
            assert follower.get(f"/v1/jobs/{name}").json()["displayname"] == f"v2 {name}"
        for server in c.servers:
            for name in names:
                wait_for(
                    lambda s=server, n=name: s.get(f"/v1/jobs/{n}").json().get("displayname") == f"v2 {n}",
                    5,
                    f"{name} on {server.name}",
                )
        gone = follower.delete(f"/v1/jobs/{names[0]}")
        assert gone.status == 200, gone
        assert follower.get(f"/v1/jobs/{names[0]}").status == 404
    finally:
        for name in names:
            c.delete_job(name)


# -- 3. target selection by tags -----------------------------------------------------------------

TAG_JOBS = {
    "tags-pool2": {"pool": "web:2"},
    "tags-pool": {"pool": "web"},
    "tags-zoneb": {"zone": "b"},
    "tags-none": {},
    "tags-nope": {"pool": "nope"},
}


@pytest.fixture(scope="module")
def tag_runs(cluster: LocalCluster) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The tag jobs run every second for ~5 ticks; their executions, once all finished."""
    cluster.heal(timeout=90)
    try:
        for name, tags in TAG_JOBS.items():
            cluster.create_job(
                {
                    "name": name,
                    "schedule": "@every 1s",
                    "tags": tags,
                    "executor_config": {"command": "echo $DKRON_RUN_ID"},
                }
            )
        wait_for(lambda: len(by_run(cluster.executions("tags-pool2"))) >= 5, 20, "5 ticks of tags-pool2")
        for name in TAG_JOBS:
            assert cluster.api().post(f"/v1/jobs/{name}/toggle").json()["disabled"] is True
        time.sleep(1.0)  # a run held by its node until its second still starts after the toggle

        def all_final() -> dict[str, list[dict[str, Any]]] | None:
            runs = {name: cluster.executions(name) for name in TAG_JOBS}
            return None if any(e["status"] == "running" for ex in runs.values() for e in ex) else runs

        # Waited for, not assumed: on a loaded host a result can take more than a second to commit.
        yield wait_for(all_final, 15, "every run of the tag jobs recorded as ended")
    finally:
        for name in TAG_JOBS:
            cluster.delete_job(name)


def complete_ticks(executions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    runs = by_run(executions)
    assert len(runs) >= 3, executions
    return runs


def test_tag_with_count_runs_on_both_agents_each_tick(tag_runs: dict[str, list[dict[str, Any]]]) -> None:
    for run_id, executions in complete_ticks(tag_runs["tags-pool2"]).items():
        assert sorted(e["node_name"] for e in executions) == ["a1", "a2"], (run_id, executions)
        assert {e["status"] for e in executions} == {"success"}, executions


def test_tag_without_count_runs_on_every_matching_node(tag_runs: dict[str, list[dict[str, Any]]]) -> None:
    for run_id, executions in complete_ticks(tag_runs["tags-pool"]).items():
        assert sorted(e["node_name"] for e in executions) == ["a1", "a2"], (run_id, executions)
        assert {e["status"] for e in executions} == {"success"}, executions


def test_tag_without_count_runs_only_on_matching_nodes(tag_runs: dict[str, list[dict[str, Any]]]) -> None:
    for run_id, executions in complete_ticks(tag_runs["tags-zoneb"]).items():
        assert [e["node_name"] for e in executions] == ["a2"], (run_id, executions)
        assert executions[0]["status"] == "success"


def test_job_without_tags_runs_on_exactly_one_node(tag_runs: dict[str, list[dict[str, Any]]]) -> None:
    for run_id, executions in complete_ticks(tag_runs["tags-none"]).items():
        assert len(executions) == 1, (run_id, executions)
        assert executions[0]["node_name"] in {"s1", "s2", "s3", "a1", "a2"}
        assert executions[0]["status"] == "success"


def test_unmatched_tags_fail_loudly(tag_runs: dict[str, list[dict[str, Any]]], cluster: LocalCluster) -> None:
    executions = tag_runs["tags-nope"]
    assert len(by_run(executions)) >= 3, executions
    for ex in executions:
        assert ex["status"] == "failed", ex
        assert re.search(r"no (alive )?node matches", ex["error"] or ""), ex
    # A manual run cannot start anywhere: refused with 409 on the leader.
    cluster.create_job(NOPE_MANUAL)
    try:
        refused = cluster.leader().post(f"/v1/jobs/{NOPE_MANUAL['name']}/run")
        assert refused.status == 409, refused
        assert "match" in refused.json()["error"], refused
    finally:
        cluster.delete_job(NOPE_MANUAL["name"])


NOPE_MANUAL = {
    "name": "tags-nope-manual",
    "schedule": "@manually",
    "tags": {"pool": "nope"},
    "executor_config": {"command": "true"},
}


def metric(node: Node, name: str) -> float:
    text = node.get("/metrics").body.decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics of {node.name}"
    return float(match.group(1))


def test_runs_due_together_start_in_a_few_calls_and_one_stream(healthy: LocalCluster) -> None:
    """40 one-shot jobs due in the same second on one agent: a handful of StartRuns calls, not 40."""
    leader = healthy.leader()
    calls, runs = metric(leader, "dkron_dispatch_calls_total"), metric(leader, "dkron_dispatch_runs_total")
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    names = [f"herd-{i:02d}" for i in range(40)]
    try:
        for name in names:
            healthy.create_job(
                {
                    "name": name,
                    "schedule": f"@at {due.strftime('%Y-%m-%dT%H:%M:%SZ')}",
                    "tags": {"zone": "b"},
                    "executor_config": {"command": "echo $DKRON_RUN_ID"},
                }
            )
        done = wait_for(
            lambda: all(any(e["status"] == "success" for e in healthy.executions(n)) for n in names) or None,
            30,
            "40 one-shot runs",
        )
        assert done
        assert {e["node_name"] for n in names for e in healthy.executions(n)} == {"a2"}
        assert healthy.leader().name == leader.name, "leadership moved during the test"
        assert metric(leader, "dkron_dispatch_runs_total") - runs == 40
        made = metric(leader, "dkron_dispatch_calls_total") - calls
        assert 1 <= made <= 4, f"{made:.0f} StartRuns calls for 40 runs due in the same second"
        assert metric(leader, "dkron_dispatch_streams") >= 1
    finally:
        for name in names:
            healthy.delete_job(name)


def test_manual_run_refused_through_a_follower_is_409(healthy: LocalCluster) -> None:
    c = healthy
    c.create_job(NOPE_MANUAL)
    try:
        follower = c.followers()[0]
        refused = follower.post(f"/v1/jobs/{NOPE_MANUAL['name']}/run")
        assert refused.status == 409, (follower.name, refused)
    finally:
        c.delete_job(NOPE_MANUAL["name"])


# -- 4. live output and kill ----------------------------------------------------------------------


def test_live_output_in_busy_and_kill(healthy: LocalCluster) -> None:
    c = healthy
    job = "live-output"
    c.create_job(
        {
            "name": job,
            "schedule": "@manually",
            "tags": {"zone": "a"},
            "executor_config": {"command": "for i in 1 2 3 4 5; do echo line$i; sleep 1; done"},
        }
    )
    try:
        leader = c.leader()
        started = leader.post(f"/v1/jobs/{job}/run")
        assert started.status in (200, 202), started
        execution_id = started.json()["execution_id"]

        def partial() -> dict[str, Any] | None:
            busy = leader.get("/v1/busy").json()
            mine = [e for e in busy if e["job_name"] == job and e["id"] == execution_id]
            return mine[0] if mine and "line2" in (mine[0]["output"] or "") else None

        live = wait_for(partial, 6, "partial output of the running execution in /v1/busy", interval=0.1)
        assert live["node_name"] == "a1" and live["status"] == "running", live
        assert "line1" in live["output"] and "line5" not in live["output"], live

        killed_at = time.monotonic()
        kill = leader.post(f"/v1/jobs/{job}/executions/{execution_id}/kill")
        assert kill.status in (200, 202), kill

        done = wait_for(lambda: ended(c, job, execution_id, leader), 6, "the killed execution to end")
        MEASURED["kill_to_recorded_s"] = time.monotonic() - killed_at
        assert done["status"] == "failed", done
        assert "kill" in ((done["error"] or "") + (done["output"] or "")).lower(), done
        assert "line5" not in (done["output"] or ""), done
        assert not [e for e in leader.get("/v1/busy").json() if e["job_name"] == job]
    finally:
        c.delete_job(job)


# -- 8. concurrency: forbid across the cluster ----------------------------------------------------


def test_forbid_never_overlaps_scheduled_or_manual(healthy: LocalCluster) -> None:
    c = healthy
    job = "forbid-sleep"
    c.create_job(
        {
            "name": job,
            "schedule": "@every 1s",
            "concurrency": "forbid",
            "tags": {"pool": "web:1"},
            "executor_config": {"command": "sleep 3"},
        },
        query="?runoncreate",  # a manual run at once, racing the first scheduled tick
    )
    manual_answers: collections.Counter[int] = collections.Counter()
    max_busy = 0
    try:
        leader = c.leader()
        deadline = time.monotonic() + 9
        i = 0
        while time.monotonic() < deadline:
            busy = [e for e in leader.get("/v1/busy").json() if e["job_name"] == job]
            max_busy = max(max_busy, len(busy))
            if i % 8 == 4:  # a manual run every 2 s, on the leader
                answer = leader.post(f"/v1/jobs/{job}/run")
                manual_answers[answer.status] += 1
                if busy:
                    assert answer.status == 409, ("manual run while one runs", busy, answer)
            i += 1
            time.sleep(0.25)
        assert leader.post(f"/v1/jobs/{job}/toggle").json()["disabled"] is True
        wait_for(lambda: not [e for e in c.executions(job) if e["status"] == "running"], 8, "runs to finish")
        executions = c.executions(job)
    finally:
        c.delete_job(job)
    ran = sorted((e for e in executions if e["status"] in RAN), key=lambda e: e["started_at"])
    kinds = collections.Counter((e["kind"], e["status"]) for e in executions)
    print(f"\nforbid: executions by (kind, status) {dict(kinds)}; manual answers {dict(manual_answers)}")
    assert len(ran) >= 2, executions
    assert {e["kind"] for e in ran} == {"manual", "scheduled"}, executions
    assert any(e["status"] == "skipped" for e in executions), executions
    assert set(manual_answers) <= {200, 202, 409} and manual_answers[409] >= 1, manual_answers
    assert max_busy <= 1, f"/v1/busy showed {max_busy} executions of a forbid job at once"
    for before, after in itertools.pairwise(ran):
        assert before["finished_at"] is not None, before
        assert ts(after["started_at"]) >= ts(before["finished_at"]), ("overlap", before, after)


# -- 7. an agent dies mid-run ---------------------------------------------------------------------


def test_agent_killed_mid_run_is_lost_and_forbid_not_blocked(healthy: LocalCluster, tmp_path: Path) -> None:
    c = healthy
    job = "lost-forbid"
    duration = tmp_path / "duration"
    duration.write_text("30")
    c.create_job(
        {
            "name": job,
            "schedule": "@every 2s",
            "concurrency": "forbid",
            "tags": {"zone": "b"},
            "executor_config": {"command": f'sleep "$(cat {duration})"'},
        }
    )
    a2 = c.node("a2")
    try:
        running = wait_for(
            lambda: [e for e in c.executions(job) if e["status"] == "running"], 10, "the sleep 30 run on a2"
        )[0]
        assert running["node_name"] == "a2", running
        # forbid: a manual run while it runs is refused
        assert c.api().post(f"/v1/jobs/{job}/run").status == 409

        a2.kill9()
        killed = time.monotonic()

        gone = wait_for(lambda: ended(c, job, running["id"]), 15, "the run of the killed agent to stop being 'running'")
        MEASURED["agent_kill_to_lost_s"] = time.monotonic() - killed
        print(f"\nagent kill -9 -> execution {gone['status']} after {MEASURED['agent_kill_to_lost_s']:.1f}s")
        assert gone["status"] == "lost", gone
        assert MEASURED["agent_kill_to_lost_s"] <= 12, MEASURED
        c.wait_members({"a2": "failed"}, timeout=5)

        duration.write_text("0")
        a2.start()
        restarted = time.monotonic()
        c.wait_members({"a2": "alive"}, timeout=60)

        def ran_again() -> list[dict[str, Any]]:
            return [
                e
                for e in c.executions(job)
                if e["status"] == "success"
                and e["node_name"] == "a2"
                and ts(e["started_at"]) > time.time() - 60
                and e["id"] != running["id"]
            ]

        wait_for(ran_again, 20, "a scheduled run of the forbid job on the restarted agent")
        print(f"forbid job ran again {time.monotonic() - restarted:.1f}s after the agent restarted")
    finally:
        c.delete_job(job)


def test_a_run_held_by_an_agent_killed_before_its_second_runs_after_the_restart(
    healthy: LocalCluster, tmp_path: Path
) -> None:
    """Runs due at a whole second reach their node half a second early and wait there. If the
    node dies meanwhile the run never starts; after the restart its run ledger says so, and
    the leader starts it then instead of recording it lost."""
    c = healthy
    job = "held-crash"
    out = tmp_path / "ran"
    c.create_job(
        {
            "name": job,
            "schedule": "@every 4s",
            "tags": {"zone": "b"},
            "executor_config": {"command": f"echo $DKRON_RUN_ID >> {out}"},
        }
    )
    a2 = c.node("a2")
    try:
        first = wait_for(lambda: [e for e in c.executions(job) if e["status"] == "success"], 15, "a first run")[0]
        held_id = None
        for _ in range(3):  # a loaded machine may dispatch a tick too late to catch it held
            tick = ts(first["scheduled_at"])
            while tick < time.time() + 1.0:
                tick += 4
            time.sleep(max(0.0, tick - 0.45 - time.time()))
            run_id = f"{job}@{round(tick * 1000)}"
            while time.time() < tick - 0.1:
                if any(e["run_id"] == run_id and e["status"] == "running" for e in c.executions(job)):
                    held_id = run_id
                    break
                time.sleep(0.02)
            if held_id:
                break
        assert held_id, "no run was ever seen held on its node before its second"
        a2.kill9()
        time.sleep(max(0.0, tick + 0.5 - time.time()))
        assert held_id not in (out.read_text().split() if out.exists() else []), "the held run started unwatched"
        a2.start()

        def settled() -> dict[str, Any] | None:
            runs = [e for e in c.executions(job) if e["run_id"] == held_id]
            return runs[0] if runs and runs[0]["status"] != "running" else None

        record = wait_for(settled, 30, f"the held run {held_id} to end")
        assert record["status"] == "success", record
        assert out.read_text().split().count(held_id) == 1
    finally:
        c.delete_job(job)


# -- 5. kill -9 the leader ------------------------------------------------------------------------


def test_leader_kill9_failover(healthy: LocalCluster) -> None:
    c = healthy
    tick, inflight = "failover-tick", "failover-inflight"
    c.create_job(
        {
            "name": tick,
            "schedule": "@every 1s",
            "tags": {"pool": "web:1"},
            "executor_config": {"command": "echo $DKRON_RUN_ID"},
        }
    )
    c.create_job(
        {
            "name": inflight,
            "schedule": "@manually",
            "tags": {"zone": "a"},
            "executor_config": {"command": "sleep 3; echo finished"},
        }
    )
    old = c.leader()
    try:
        wait_for(lambda: len([e for e in c.executions(tick) if e["status"] == "success"]) >= 2, 10, "ticks")
        run = old.post(f"/v1/jobs/{inflight}/run")
        assert run.status in (200, 202), run
        inflight_id = run.json()["execution_id"]
        wait_for(lambda: (execution(c, inflight, inflight_id, old) or {}).get("started_at"), 5, "in-flight start")
        # a random moment within the tick's second (printed: a failure names the moment)
        offset = random.random()
        time.sleep((1.0 - time.time() % 1.0) + offset)

        old.kill9()
        killed_wall, killed = time.time(), time.monotonic()
        new = c.leader(timeout=20, exclude=[old.name])
        MEASURED["leader_election_s"] = time.monotonic() - killed
        assert new is not old

        def after_kill() -> list[dict[str, Any]]:
            runs = [e for e in c.executions(tick, new) if e["status"] in RAN and e["started_at"]]
            return [e for e in runs if ts(e["started_at"]) > killed_wall]

        wait_for(lambda: len(after_kill()) >= 3, 20, "3 runs of the @every 1s job after the kill")
        runs = [e for e in c.executions(tick, new) if e["status"] in RAN]
        before = max(ts(e["started_at"]) for e in runs if ts(e["started_at"]) <= killed_wall)
        first_after = min(ts(e["started_at"]) for e in runs if ts(e["started_at"]) > killed_wall)
        MEASURED["leader_kill9_run_gap_s"] = first_after - before
        print(
            f"\nkill -9 leader {old.name}: new leader {new.name} agreed after {MEASURED['leader_election_s']:.2f}s; "
            f"gap between runs {MEASURED['leader_kill9_run_gap_s']:.2f}s "
            f"(last before kill -{killed_wall - before:.2f}s, first after +{first_after - killed_wall:.2f}s; "
            f"killed at +{offset:.2f}s into a second)"
        )
        everything = c.executions(tick, new)
        for e in everything:
            if abs(ts(e["started_at"]) - killed_wall) < 4:
                print("   ", e["run_id"], e["started_at"], e["node_name"], e["status"], e["error"] or "")
        assert MEASURED["leader_kill9_run_gap_s"] <= 6, MEASURED
        # every tick across the failover either ran or is recorded (e.g. as missed): none vanished
        ticks = {int(e["run_id"].rsplit("@", 1)[1]) for e in everything}
        for tick_ms in range(min(ticks), max(ticks), 1000):
            assert tick_ms in ticks, (f"tick {tick_ms} has no execution record", sorted(ticks))
        # the same tick never ran twice across the failover
        duplicates = {r: e for r, e in by_run([e for e in runs if e["status"] in RAN]).items() if len(e) > 1}
        assert not duplicates, duplicates

        c.wait_members({old.name: "failed"}, timeout=10, server=new)  # no heartbeat for 5 s

        done = wait_for(
            lambda: ended(c, inflight, inflight_id, new),
            15,
            "the in-flight run to be recorded by the new leader",
        )
        assert done["status"] == "success", done
        assert "finished" in (done["output"] or ""), done

        old.start()
        c.wait_members({old.name: "alive"}, timeout=60, server=new)
        peers = wait_peers(new, 3, timeout=30)
        assert sorted(p["node"] for p in peers) == ["s1", "s2", "s3"], peers
        assert len([p for p in peers if p["state"] == "leader"]) == 1, peers
        wait_for(lambda: old.get(f"/v1/jobs/{tick}").status == 200, 20, f"{old.name} serving the jobs again")
        # and it caught up with what was recorded while it was down
        wait_for(lambda: (execution(c, inflight, inflight_id, old) or {}).get("status") == "success", 10, "catch-up")
    finally:
        c.delete_job(tick)
        c.delete_job(inflight)


# -- 6. SIGSTOP the leader longer than an election timeout ----------------------------------------


def test_frozen_leader_never_runs_a_tick_twice(healthy: LocalCluster, tmp_path: Path) -> None:
    c = healthy
    jobs = {"freeze-any": {}, "freeze-agents": {"pool": "web:1"}}  # one node of all / one of the agents
    files = {job: tmp_path / f"{job}.txt" for job in jobs}
    for job, tags in jobs.items():
        command = f'echo "$DKRON_RUN_ID" >> {files[job]}'
        c.create_job({"name": job, "schedule": "@every 1s", "tags": tags, "executor_config": {"command": command}})
    old = c.leader()
    try:
        for path in files.values():
            wait_for(lambda p=path: p.exists() and len(p.read_text().split()) >= 2, 10, f"first ticks in {path}")
        old.freeze()
        frozen = time.monotonic()
        try:
            others = [s for s in c.live_servers() if s is not old]

            def elected_without_old() -> str | None:
                names = {s.get("/v1/leader", timeout=1).json().get("Name") for s in others}
                return names.pop() if len(names) == 1 and old.name not in names and None not in names else None

            interim = wait_for(elected_without_old, 2.9, "a leader among the other servers", interval=0.05)
            MEASURED["freeze_to_new_leader_s"] = time.monotonic() - frozen
            time.sleep(max(0.0, 3.0 - (time.monotonic() - frozen)))
        finally:
            old.thaw()
        thawed_wall = time.time()
        time.sleep(10)
        new = c.leader(timeout=10)
        print(
            f"\nfreeze {old.name} 3s: interim leader {interim} after {MEASURED['freeze_to_new_leader_s']:.2f}s, "
            f"leader 10s after thaw {new.name}"
        )
        for job, path in files.items():
            lines = path.read_text().split()
            counts = collections.Counter(lines)
            duplicates = {run_id: n for run_id, n in counts.items() if n > 1}
            after = [r for r in counts if int(r.rsplit("@", 1)[1]) / 1000 > thawed_wall]
            print(f"    {job}: {len(lines)} runs, {len(after)} after the thaw, run ids twice: {duplicates}")
            assert not duplicates, f"{job}: run ids that ran twice: {duplicates}"
            assert len(after) >= 7, (job, lines)
    finally:
        old.thaw()
        for job in jobs:
            c.delete_job(job)


# -- 10. a retry goes to another node -------------------------------------------------------------


def test_a_retry_prefers_another_node_than_the_failed_attempt(healthy: LocalCluster) -> None:
    c = healthy
    job = "retry-elsewhere"
    c.create_job(
        {
            "name": job,
            "schedule": "@manually",
            "tags": {"pool": "web:1"},  # one of a1, a2 per attempt
            "retries": 1,
            "retry_backoff": "200ms",
            "executor_config": {"command": '[ "$DKRON_ATTEMPT" -ge 2 ]'},  # the first attempt fails
        }
    )
    try:
        runs = [c.api().post(f"/v1/jobs/{job}/run", timeout=10) for _ in range(3)]
        assert all(r.status == 202 for r in runs), runs
        run_ids = {r.json()["run_id"] for r in runs}

        def both_attempts() -> dict[str, dict[int, dict[str, Any]]] | None:
            attempts: dict[str, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
            for ex in c.executions(job):
                attempts[ex["run_id"]][ex["attempt"]] = ex
            done = all(
                attempts[r].get(2, {}).get("status") == "success" and attempts[r].get(1, {}).get("status") == "failed"
                for r in run_ids
            )
            return attempts if done else None

        attempts = wait_for(both_attempts, 30, "three runs, each failed once then retried successfully")
        for run_id in run_ids:
            first, second = attempts[run_id][1], attempts[run_id][2]
            assert second["node_name"] != first["node_name"], (first, second)
    finally:
        c.delete_job(job)


# -- 9. leave, remove-peer (destructive: last) ----------------------------------------------------


def test_leave_stops_the_agent_and_marks_it_left(healthy: LocalCluster) -> None:
    c = healthy
    a1 = c.node("a1")
    done = dkron_cli("leave", "--rpc-addr", a1.rpc_addr)
    assert done.returncode == 0, done.stderr
    c.retired.add("a1")
    a1.stopped_on_purpose = True
    assert a1.proc is not None
    assert a1.proc.wait(20) == 0, a1.log()
    c.wait_members({"a1": "left"}, timeout=10)
    time.sleep(6)  # longer than the failure timeout: it must stay "left", not become "failed"
    for server in c.live_servers():
        assert c.members(server)["a1"]["statusText"] == "left", server.name


@pytest.fixture(scope="module")
def removed_peer(cluster: LocalCluster) -> tuple[Node, Node]:
    """A follower killed -9 and removed with ``dkron raft remove-peer`` via the leader (for good)."""
    cluster.heal(timeout=90)
    leader = cluster.leader()
    dead = cluster.followers()[0]
    dead.kill9()
    cluster.retired.add(dead.name)
    # The leader sees the connection close within a tick; on a loaded host, or if its tick thread
    # is busy, a moment later (CI once listed it "alive" straight after the kill).
    wait_for(
        lambda: {p["node"]: p["status"] for p in peers_via(leader)}[dead.name] == "unreachable",
        10,
        f"{dead.name} listed unreachable",
    )
    done = dkron_cli("raft", "remove-peer", "--rpc-addr", leader.rpc_addr, "--peer-id", dead.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dead.name in done.stdout, done.stdout
    return leader, dead


def test_remove_peer_of_a_dead_server(cluster: LocalCluster, removed_peer: tuple[Node, Node]) -> None:
    c = cluster
    leader, dead = removed_peer
    peers = wait_peers(leader, 2, timeout=10)
    assert dead.name not in {p["node"] for p in peers}, peers
    # The two servers left form a quorum of two: on a loaded machine one of them may call an
    # election after the removal (seen in CI). Either may lead; exactly one does, and both agree.
    assert len([p for p in peers if p["state"] == "leader"]) == 1, peers
    leader = c.leader(timeout=10)
    assert leader.name in {p["node"] for p in peers} and leader is not dead
    follower = next(s for s in c.live_servers() if s is not leader)
    for via in (leader, follower):
        name = f"after-remove-{via.name}"
        c.create_job({"name": name, "schedule": "@manually", "executor_config": {"command": "true"}}, via=via)
        for server in c.live_servers():
            wait_for(lambda s=server, n=name: s.get(f"/v1/jobs/{n}").status == 200, 5, f"{name} on {server.name}")
        c.delete_job(name)


def test_removed_peer_is_gone_from_every_servers_list(cluster: LocalCluster, removed_peer: tuple[Node, Node]) -> None:
    leader, dead = removed_peer
    wait_peers(leader, 2, timeout=10)
    for server in cluster.live_servers():
        peers = peers_via(server)
        assert dead.name not in {p["node"] for p in peers}, (server.name, peers)
