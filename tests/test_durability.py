"""Crash safety of a real agent: kill -9 at random moments, restart on the same data dir, check.

Every test runs real ``dkron agent`` processes on 127.0.0.1 and judges them only by what a user
sees: the HTTP API, files the jobs write, exit codes. Kill moments are random (the seed and the
moments are in every failure message), some aimed at a dangerous window; every loop is bounded.
"""

from __future__ import annotations

import collections
import http.client
import os
import random
import re
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from pysyncobj.journal import FileJournal

from dkron.jobs import COMPUTED_FIELDS
from dkron.testing import AgentProcess

NETWORK_ERRORS = (OSError, http.client.HTTPException)


def seeded() -> tuple[random.Random, str]:
    # DKRON_TEST_SEED replays the plan of a failed run (its message names the seed).
    seed = int(os.environ.get("DKRON_TEST_SEED") or int.from_bytes(os.urandom(4), "big"))
    return random.Random(seed), f"seed={seed}"


class JobWriter(threading.Thread):
    """Creates jobs through POST /v1/jobs as fast as the agent answers; remembers every 201."""

    def __init__(self, agent: AgentProcess) -> None:
        super().__init__(name="job-writer", daemon=True)
        self.agent = agent
        self.acked: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # name -> (sent, answer)
        self.statuses: collections.Counter[int] = collections.Counter()
        self.network_errors = 0
        self.context = ""  # what a failure message needs to reproduce the run
        self._halt = threading.Event()

    @staticmethod
    def job(i: int) -> dict[str, Any]:
        return {
            "name": f"acked-{i:05d}",
            "displayname": f"Job nº{i} ✓",
            "schedule": "@manually" if i % 3 else "0 0 4 1 1 *",
            "owner": f"team-{i % 7}",
            "disabled": i % 5 == 0,
            "retries": i % 4,
            "concurrency": "forbid" if i % 2 else "allow",
            "executor": "shell",
            "executor_config": {"command": f"echo job {i}", "timeout": f"{1 + i % 9}s"},
            "metadata": {"i": str(i), "parity": "odd" if i % 2 else "even"},
            "tags": {"zone": f"z{i % 3}"},
        }

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            body = self.job(i)
            try:
                res = self.agent.post("/v1/jobs", body, timeout=15)
            except NETWORK_ERRORS:
                self.network_errors += 1
                time.sleep(0.02)  # the agent is down or restarting
                continue
            finally:
                i += 1
            self.statuses[res.status] += 1
            if res.status == 201:
                self.acked[body["name"]] = (body, res.json())

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        assert not self.is_alive()


def ticker_job(name: str, out: Path) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "@every 1s",
        "executor": "shell",
        "executor_config": {"command": f'echo "$DKRON_RUN_ID" >> {out}', "shell": "true"},
    }


def run_ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def all_jobs(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    res = agent.get("/v1/jobs", timeout=30)
    assert res.status == 200, res
    return {job["name"]: job for job in res.json()}


def executions(agent: AgentProcess, job: str) -> list[dict[str, Any]]:
    res = agent.get(f"/v1/jobs/{job}/executions", timeout=30)
    assert res.status == 200, res
    return res.json()


def _marker_version(marker: Path) -> tuple[int, int] | None:
    try:
        st = marker.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def kill_and_restart_while_writing(
    agent: AgentProcess, rounds: int, tag: str, at_compaction: Path | None = None
) -> JobWriter:
    """Run a JobWriter and kill -9 + restart the agent ``rounds`` times at random moments.

    With ``at_compaction`` (the data dir's raft.marker), every other kill instead lands the moment
    a new snapshot marker appears: between the marker write and the journal truncation.
    """
    rng, seed = seeded()
    writer = JobWriter(agent)
    writer.start()
    moments: list[Any] = []
    acked_per_life = []
    try:
        for round_ in range(rounds):
            before = len(writer.acked)
            if at_compaction is not None and round_ % 2 == 1:
                # The first compaction of a new life can come 20 ms after it answers, before its first
                # write is acknowledged; killing then would fail the check below for no fault of the
                # node. So this round waits for one write first (a node unable to commit still fails).
                deadline = time.monotonic() + 10
                while len(writer.acked) == before and time.monotonic() < deadline:
                    time.sleep(0.001)
                seen = _marker_version(at_compaction)
                deadline = time.monotonic() + 3
                while _marker_version(at_compaction) == seen and time.monotonic() < deadline:
                    time.sleep(0.0005)
                moments.append("at-compaction" if _marker_version(at_compaction) != seen else "no-compaction-in-3s")
            else:
                moment = rng.uniform(0.2, 1.0)
                moments.append(round(moment, 3))
                time.sleep(moment)
            agent.kill9()
            acked_per_life.append(len(writer.acked) - before)
            agent.start()
        before = len(writer.acked)
        time.sleep(0.5)  # writes after the last restart must work too
        acked_per_life.append(len(writer.acked) - before)
    finally:
        writer.stop()
    writer.context = (
        f"{tag} {seed} kill moments={moments} acked per process life={acked_per_life} statuses={dict(writer.statuses)}"
    )
    # Every restarted process took writes: a node that comes back unable to commit fails here.
    assert all(acked_per_life), writer.context
    return writer


def check_acked_jobs(agent: AgentProcess, writer: JobWriter) -> None:
    context = writer.context
    # A user saw only "created" (or no answer while the agent was down): never a 503 (no commit), a
    # 404 or 409 for a create, which is how writes whose Raft index the database believes it has
    # already applied would show up.
    assert set(writer.statuses) == {201}, context
    assert len(writer.acked) >= 100, f"too few acknowledged writes to mean anything; {context}"
    stored = all_jobs(agent)
    lost = sorted(set(writer.acked) - set(stored))
    assert not lost, f"{len(lost)} acknowledged jobs lost, e.g. {lost[:5]}; {context}"
    for name, (sent, answer) in writer.acked.items():
        job = stored[name]
        for key, value in answer.items():
            if key not in COMPUTED_FIELDS:
                assert job[key] == value, f"{name}.{key}: {job[key]!r} != acknowledged {value!r}; {context}"
        assert job["displayname"] == sent["displayname"]
        assert job["metadata"] == sent["metadata"]
        assert job["executor_config"]["command"] == sent["executor_config"]["command"]
        assert job["disabled"] is sent["disabled"] and job["retries"] == sent["retries"]


def check_counters_not_doubled(agent: AgentProcess, tickers: dict[str, Path], context: str) -> None:
    stored = all_jobs(agent)
    for name, out in tickers.items():
        ran = run_ids(out)
        job = stored[name]
        assert job["success_count"] >= 1, f"{name} never ran; {context}"
        assert job["success_count"] <= len(set(ran)), (
            f"{name}: success_count {job['success_count']} but only {len(set(ran))} distinct runs happened "
            f"(counters re-applied on restart?); {context}"
        )


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9_at_random_moments(agent_factory, tmp_path):
    # Few executions kept per job: records replayed onto trimmed rows would count them again.
    agent = agent_factory(tmp_path / "data", extra_args=("--retention-count", "3")).start()
    tickers = {f"ticker-{i}": tmp_path / f"ticker-{i}.log" for i in range(2)}
    for name, out in tickers.items():
        assert agent.post("/v1/jobs", ticker_job(name, out)).status == 201

    writer = kill_and_restart_while_writing(agent, rounds=5, tag="no-compaction")

    check_acked_jobs(agent, writer)
    check_counters_not_doubled(agent, tickers, writer.context)


@pytest.mark.slow
def test_acknowledged_writes_survive_kill_9_with_constant_log_compaction(agent_factory, tmp_path):
    data = tmp_path / "data"
    agent = agent_factory(data, env={"DKRON_RAFT_COMPACTION_ENTRIES": "50"}, extra_args=("--retention-count", "3"))
    agent.start()
    tickers = {"ticker": tmp_path / "ticker.log"}
    assert agent.post("/v1/jobs", ticker_job("ticker", tickers["ticker"])).status == 201

    writer = kill_and_restart_while_writing(
        agent, rounds=6, tag="compaction-every-50", at_compaction=data / "raft.marker"
    )

    check_acked_jobs(agent, writer)
    check_counters_not_doubled(agent, tickers, writer.context)
    assert (data / "raft.marker").exists(), "no log compaction happened"
    assert agent.stop() == 0
    journal = FileJournal(str(data / "raft.journal"))
    try:
        kept = [journal[i][1] for i in range(len(journal))]
    finally:
        journal._destroy()
    # Hundreds of entries were written; compaction every 50 keeps the journal short.
    assert len(writer.acked) > 200 and len(kept) < 200, f"journal holds {len(kept)} entries"
    assert kept[0] > len(writer.acked) - 200, f"the journal still starts at index {kept[0]}"
    # And the data dir still starts cleanly after a graceful stop.
    agent.start()
    assert set(writer.acked) <= set(all_jobs(agent))


MISSED = re.compile(r"(\d+) tick\(s\) from (\S+) to (\S+) missed")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.slow
def test_a_tick_is_never_launched_twice_across_kill_9_and_every_tick_is_accounted_for(agent_factory, tmp_path):
    rng, seed = seeded()
    out = tmp_path / "runs.log"
    agent = agent_factory(tmp_path / "data").start()
    assert agent.post("/v1/jobs", ticker_job("tick", out)).status == 201
    agent.wait_for(lambda: run_ids(out), timeout=5)

    plan = []
    long_gap_round = rng.randrange(4)
    for round_ in range(4):
        # One kill lands at a random moment, the others just as a run has started (its shell has
        # written its id, its "running" record is probably not committed yet): the window in which
        # a restarted leader could launch the same tick again.
        at_start = round_ != 0
        up = rng.uniform(0.4, 1.4)
        # The long outage must outlast what is already decided before the kill (launches are
        # committed up to 1.5 s ahead; a held run and a committed launch both run after the
        # restart) and still leave ticks that only the catch-up policy decides on.
        down = 4.0 if round_ == long_gap_round else rng.uniform(0.0, 0.6)
        plan.append(("at-run-start" if at_start else round(up, 2), round(down, 2)))
        if at_start:
            seen = len(run_ids(out))
            deadline = time.monotonic() + 3
            while len(run_ids(out)) == seen and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            time.sleep(up)
        agent.kill9()
        time.sleep(down)
        agent.start()
    time.sleep(1.5)
    context = f"{seed} (kill moment, downtime) per round={plan}"

    ran = run_ids(out)
    duplicates = [rid for rid, n in collections.Counter(ran).items() if n > 1]
    assert not duplicates, f"ticks launched twice: {duplicates}; {context}"
    ticks_ran = sorted(int(rid.split("@")[1]) for rid in ran)
    assert all(t % 1000 == 0 for t in ticks_ran), ran

    history = executions(agent, "tick")
    missed_ticks: set[int] = set()
    missed_total = 0
    for ex in history:
        if ex["status"] != "missed":
            continue
        count, first, last = MISSED.search(ex["error"]).groups()
        span = list(range(_ms(first), _ms(last) + 1, 1000))
        assert int(count) == len(span), f"missed record counts {count} ticks for {span}; {context}"
        assert ex["run_id"] == f"tick@{_ms(last)}"
        missed_ticks.update(span)
        missed_total += int(count)
    assert missed_ticks, f"a {max(d for _, d in plan)}s outage must leave missed ticks; {context}"
    assert not missed_ticks & set(ticks_ran), f"ticks both run and reported missed; {context}"
    lost_ticks = {int(ex["run_id"].split("@")[1]) for ex in history if ex["status"] == "lost"}
    assert agent.get("/v1/jobs/tick").json()["missed_count"] == missed_total

    # A kill loses the runs in flight: their results if they ran, or the runs themselves if
    # the kill fell between a start (written to the ledger) and the run's write. Usually one;
    # right after a restart up to three start together (a held tick sent again, a committed
    # launch adopted, the catch-up tick), and the at-run-start kills land just then. A run
    # that was only held when its node died is not lost: the restarted node's ledger does not
    # list it, and it runs then (test_cluster checks that case alone).
    why = [(ex["run_id"], ex["error"]) for ex in history if ex["status"] == "lost"]
    assert len(lost_ticks) <= 3 * len(plan), f"more lost runs than could be in flight: {why}; {context}"

    expected = range(ticks_ran[0], ticks_ran[-1] + 1, 1000)
    unaccounted = [t for t in expected if t not in set(ticks_ran) | missed_ticks | lost_ticks]
    records = [
        (ex["run_id"], ex["status"], ex.get("error"), ex.get("started_at"))
        for ex in history
        if int(ex["run_id"].split("@")[1]) in unaccounted
    ]
    assert not unaccounted, f"ticks neither run nor reported missed or lost: {unaccounted} {records}; {context}"


def _processes_running(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _start_and_wait_running(agent: AgentProcess, job: dict[str, Any]) -> str:
    assert agent.post("/v1/jobs", job).status == 201
    exec_id = agent.post(f"/v1/jobs/{job['name']}/run").json()["execution_id"]
    # Running, and its "running" record committed to the store (what a restart finds).
    agent.wait_for(
        lambda: any(e["id"] == exec_id and e["status"] == "running" for e in executions(agent, job["name"])),
        timeout=10,
    )
    return exec_id


def test_sigterm_lets_a_running_execution_finish_and_records_it(agent_factory, tmp_path):
    agent = agent_factory(tmp_path / "data").start()
    job = {
        "name": "finishes",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "sleep 2; echo done", "shell": "true"},
    }
    exec_id = _start_and_wait_running(agent, job)
    began = time.monotonic()
    assert agent.stop(signal.SIGTERM, timeout=20) == 0
    assert 0.5 < time.monotonic() - began < 10, "graceful stop must wait for the run, and no longer"

    agent.start()
    done = agent.get(f"/v1/jobs/finishes/executions/{exec_id}").json()
    assert done["status"] == "success" and done["output"].strip() == "done", done
    assert agent.get("/v1/jobs/finishes").json()["success_count"] == 1


def test_sigterm_with_a_short_shutdown_timeout_cancels_a_long_run_and_exits_0(agent_factory, tmp_path):
    marker = f"dkron-durability-{os.getpid()}-{time.monotonic_ns()}"
    agent = agent_factory(tmp_path / "data", extra_args=("--shutdown-timeout", "1s")).start()
    job = {
        "name": "too-long",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": f"sleep 30; echo {marker}", "shell": "true"},
    }
    exec_id = _start_and_wait_running(agent, job)
    began = time.monotonic()
    assert agent.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - began < 6
    assert not _processes_running(marker), "the cancelled job's process outlived the agent"

    agent.start()
    ex = agent.get(f"/v1/jobs/too-long/executions/{exec_id}").json()
    assert ex["status"] == "failed" and ex["success"] is False, ex
    assert "shutting down" in ex["output"] or "killed" in ex["error"], ex
    job_state = agent.get("/v1/jobs/too-long").json()
    assert job_state["error_count"] == 1 and job_state["status"] == "failed"


def test_an_execution_left_running_by_kill_9_is_marked_lost_after_restart(agent_factory, tmp_path):
    marker = f"dkron-lost-{os.getpid()}-{time.monotonic_ns()}"
    agent = agent_factory(tmp_path / "data").start()
    job = {
        "name": "orphaned",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": f"sleep 30; echo {marker}", "shell": "true"},
    }
    try:
        exec_id = _start_and_wait_running(agent, job)
        agent.kill9()
        agent.start()
        lost = agent.wait_for(
            lambda: (e := agent.get(f"/v1/jobs/orphaned/executions/{exec_id}").json())["status"] == "lost" and e,
            timeout=10,
        )
        assert lost["finished_at"] and "outcome unknown" in lost["error"], lost
        assert agent.get("/v1/busy").json() == []
        state = agent.get("/v1/jobs/orphaned").json()
        assert state["error_count"] == 1 and state["status"] == "failed"
        # Still lost (not resurrected) after another restart.
        agent.stop()
        agent.start()
        assert agent.get(f"/v1/jobs/orphaned/executions/{exec_id}").json()["status"] == "lost"
    finally:
        for proc in _processes_running(marker):  # the job's shell outlives a kill -9 of its agent
            proc.kill()


def test_a_restart_does_not_report_runs_trimmed_from_history_as_lost(agent_factory, tmp_path):
    out = tmp_path / "runs.log"
    agent = agent_factory(tmp_path / "data", extra_args=("--retention-count", "1")).start()
    job = {**ticker_job("by-hand", out), "schedule": "@manually"}
    assert agent.post("/v1/jobs", job).status == 201
    for n in range(1, 4):
        assert agent.post("/v1/jobs/by-hand/run").status == 202
        agent.wait_for(lambda n=n: agent.get("/v1/jobs/by-hand").json()["success_count"] == n, timeout=10)
    assert agent.stop() == 0  # a clean restart: nothing was in flight
    agent.start()
    time.sleep(1.0)
    job = agent.get("/v1/jobs/by-hand").json()
    assert len(run_ids(out)) == len(set(run_ids(out))) == 3  # nothing ran twice (the ledger holds)
    assert job["error_count"] == 0, f"{job['error_count']} successful runs reported lost after a clean restart"
