"""Chaos run: a real 3-server + 2-agent cluster whose leader is killed or frozen again and again.

Usage (the by-hand form; ``tests/test_chaos.py`` runs the same code with small sizes)::

    .venv/bin/python bench/chaos.py --minutes 5 --jobs 50 --seed 7
    .venv/bin/python bench/chaos.py --minutes 2 --jobs 20 --keep      # keep the work dir and logs

What it does:

1. Starts 3 servers (``--bootstrap-expect 3``, ``--retry-join`` to all three,
   ``--retention-count 1000000`` so no execution record is trimmed) and 2 agents tagged
   ``pool=web``, every one a separate ``python -m dkron.cli agent`` process on free 127.0.0.1
   ports (``dkron.localcluster.LocalCluster``, the launcher the cluster tests use too).
2. Creates ``--jobs`` jobs ``@every 1s`` with tags ``{"pool": "web:1"}`` (one agent per tick),
   each appending ``$DKRON_RUN_ID $DKRON_NODE_NAME $EPOCHREALTIME`` to its own file (bash
   builtins only: no fork, microsecond wall clock).
3. Chaos for ``--minutes``: after a calm of ``--gap`` seconds (random, seeded), the current leader
   is either ``kill -9``-ed and restarted on the same data dir after 1-3 s, or ``kill -STOP``-ped
   for 1-3 s and then ``kill -CONT``-ed. The next calm starts once the victim answers again.
4. Stops the chaos, lets the cluster settle (``--settle``, 5 s), reads every job's execution
   history from the final leader (``GET /v1/jobs/<job>/executions``, paged) and every job
   definition from every server, then stops every node gracefully (SIGTERM) and times it.

What it checks:

* **Duplicates**: a run id (``<job>@<tick ms>``) written twice, by any node, at any time.
* **Accounting**: every tick of every job between its first and its last run (up to a cut-off a
  few seconds before the history is read) either ran (its run id is in the job's file), or lies
  in the range of a ``missed`` execution (``N tick(s) from A to B missed ...``), or has a
  ``skipped``/``lost``/``failed`` execution with a reason. Any other tick is *unaccounted*, and
  is printed with what the records say about it and the nearest fault.
* **Job definitions**: all N jobs with their fields on every server.
* Also reported, without failing: ticks that ran but whose history has no final record (or a
  wrong one, e.g. ``lost``), records that say a run started although its file has no line, ticks
  both run and counted as missed, followers whose execution history differs from the final
  leader's (each server answers from its own state), how often an agent refused a re-dispatch
  of a run it had already started (and how often the dispatcher was a leader just thawed by
  ``kill -CONT``), CRITICAL/ERROR lines in the node logs, and each node's graceful stop time.

``--overlap`` recovers the victims in the background, so faults overlap and the cluster can lose
its quorum for a few seconds: that exercises catch-up runs and ``missed`` records (the default
fault model almost never leaves a gap longer than the 1 s lookahead). ``--catchup mixed`` gives
the jobs the policies latest, none and all in turn. Everything a run found is also written to
``<work dir>/result.json``; the work dir (node logs, run files) is kept when the run fails.

Failover time, per fault: from the ``kill``/``STOP`` to the start of the first run of a tick
scheduled after the fault (launched by the leader that came after it). It includes the
wait for the next whole second, since every job ticks on whole seconds: the fault moments are
uniform in the second, so that wait is 0.5 s on average. ``late`` is that first run's start minus
its tick: how late the first launch after the fault was.

The last line of the output is one JSON object (as in the other benchmarks).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dkron.localcluster import NETWORK_ERRORS, Http, LocalCluster, Node

# ----------------------------------------------------------------------------------------------
# Workload
# ----------------------------------------------------------------------------------------------
CATCHUP_POLICIES = ("latest", "none", "all")


def job_name(i: int) -> str:
    return f"chaos-{i:03d}"


def job_spec(i: int, out_dir: Path, catchup: str) -> dict[str, Any]:
    bash = shutil.which("bash") or "/bin/bash"
    out = out_dir / f"{job_name(i)}.runs"
    policy = CATCHUP_POLICIES[i % 3] if catchup == "mixed" else catchup
    return {
        "name": job_name(i),
        "displayname": f"chaos job {i}",
        "schedule": "@every 1s",
        "owner": "chaos",
        "tags": {"pool": "web:1"},
        "catchup": policy,
        "metadata": {"suite": "chaos", "index": str(i)},
        "executor": "shell",
        "executor_config": {
            # bash builtins only: one exec, no fork; $EPOCHREALTIME has microseconds
            "command": f"{bash} -c 'echo \"$DKRON_RUN_ID $DKRON_NODE_NAME $EPOCHREALTIME\" >> {out}'",
            "timeout": "20s",
        },
    }


#: Fields every server must hold as they were sent.
CHECKED_FIELDS = ("schedule", "displayname", "owner", "tags", "catchup", "metadata", "executor", "executor_config")


def post_with_retry(cluster: LocalCluster, path: str, body: Any, deadline_s: float = 60.0) -> Http:
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        leader = cluster.find_leader(timeout=5)
        if leader is not None:
            try:
                answer = leader.request("POST", path, body, timeout=15)
            except NETWORK_ERRORS as exc:
                last = exc
            else:
                if answer.status < 300:
                    return answer
                last = answer
                if answer.status < 500 and answer.status not in (409, 429):
                    raise RuntimeError(f"POST {path} refused: {answer.status} {answer.body[:300]!r}")
        time.sleep(0.2)
    raise TimeoutError(f"POST {path} did not succeed within {deadline_s:g}s: {last!r}")


# ----------------------------------------------------------------------------------------------
# Chaos
# ----------------------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str  # kill | stop
    victim: str
    at: float  # wall clock of the signal
    hold: float  # planned seconds down (kill -> restart, STOP -> CONT)
    recovered_at: float = 0.0
    leader_after: str | None = None
    note: str = ""

    def label(self) -> str:
        what = "kill -9" if self.kind == "kill" else "kill -STOP"
        return f"{what} {self.victim} at {fmt_wall(self.at)} for {self.hold:.1f}s"


def _recover(node: Node, fault: Fault) -> None:
    if fault.kind == "kill":
        node.start()
    else:
        node.thaw()
    fault.recovered_at = time.time()


def fmt_wall(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def run_chaos(
    cluster: LocalCluster,
    rng: random.Random,
    seconds: float,
    *,
    gap: tuple[float, float] = (2.0, 5.0),
    hold: tuple[float, float] = (1.0, 3.0),
    kinds: Sequence[str] = ("kill", "stop"),
    overlap: bool = False,
    say: Callable[[str], None] = print,
) -> list[Fault]:
    """Fault the leader again and again for ``seconds``; every draw comes from ``rng`` in order.

    With ``overlap``, a victim recovers in the background and the next calm starts at once: the
    next fault may hit while it is still down, leaving the cluster without a quorum for a while,
    which exercises catch-up runs and ``missed`` records.
    """
    faults: list[Fault] = []
    timers: list[threading.Timer] = []
    end = time.monotonic() + seconds
    try:
        while True:
            calm = rng.uniform(*gap)
            kind = rng.choice(list(kinds))
            down = rng.uniform(*hold)
            if time.monotonic() + calm + down > end:
                break
            time.sleep(calm)
            leader = cluster.find_leader(timeout=20)
            if leader is None:
                say(f"  {fmt_wall(time.time())}  no leader agreed within 20 s; no fault this round")
                continue
            fault = Fault(kind, leader.name, time.time(), down)
            if overlap:
                # Recover in the background: the next fault may come while this victim is still down.
                if kind == "kill":
                    leader.kill9()
                else:
                    leader.freeze()
                timer = threading.Timer(down, _recover, args=(leader, fault))
                timer.start()
                timers.append(timer)
                after = cluster.find_leader(timeout=3)
                fault.leader_after = after.name if after else None
                faults.append(fault)
                say(f"  {fault.label()}: leader now {fault.leader_after}")
                continue
            if kind == "kill":
                leader.kill9()
                time.sleep(down)
                leader.start()
            else:
                leader.freeze()
                time.sleep(down)
                leader.thaw()
            fault.recovered_at = time.time()
            # The next calm starts once the victim answers again (a restart takes a few seconds).
            deadline = time.monotonic() + 60
            while not leader.healthy() and time.monotonic() < deadline:
                if not leader.running:
                    fault.note = f"{leader.name} exited with {leader.proc.returncode if leader.proc else None}"
                    say(f"  {fault.note}; starting it again\n{leader.log(1500)}")
                    leader.start()
                time.sleep(0.1)
            after = cluster.find_leader(timeout=10)
            fault.leader_after = after.name if after else None
            faults.append(fault)
            say(f"  {fault.label()}: back after {time.time() - fault.at:.1f}s; leader now {fault.leader_after}")
    finally:
        failed = sys.exc_info()[0] is not None
        for timer in timers:
            if failed:
                timer.cancel()  # the caller stops the cluster: restart nothing behind its back
            timer.join()
    return faults


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------
MISSED_RE = re.compile(r"(\d+) tick\(s\) from (\S+) to (\S+) missed")


def iso_ms(text: str | None) -> int | None:
    if not text:
        return None
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Run:
    run_id: str
    job: str
    tick_ms: int
    node: str
    start: float  # wall clock seconds at process start


def read_runs(path: Path) -> tuple[list[Run], int]:
    """The lines of one job's file (``<run id> <node> <epoch seconds>``); returns (runs, malformed)."""
    runs, malformed = [], 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return [], 0
    for line in lines:
        parts = line.split()
        try:
            run_id, node, start = parts
            job, _, tick = run_id.rpartition("@")
            runs.append(Run(run_id, job, int(tick), node, float(start)))
        except ValueError:
            malformed += 1
    return runs, malformed


def fetch_executions(leader: Node, job: str, page: int = 5000) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    start = 0
    while True:
        answer = leader.get(f"/v1/jobs/{job}/executions?_start={start}&_end={start + page}", timeout=30)
        if answer.status != 200:
            raise RuntimeError(f"executions of {job}: {answer.status} {answer.body[:300]!r}")
        batch = answer.json()
        rows += batch
        total = int(answer.headers.get("X-Total-Count", len(rows)))
        start += page
        if not batch or start >= total:
            return rows


def fetch_jobs(server: Node) -> dict[str, dict[str, Any]]:
    answer = server.get("/v1/jobs?_end=1000000", timeout=30)
    if answer.status != 200:
        raise RuntimeError(f"jobs on {server.name}: {answer.status} {answer.body[:300]!r}")
    return {job["name"]: job for job in answer.json()}


def normalize_reason(text: str) -> str:
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "<time>", text or "")
    text = re.sub(r"\b\d+\b", "#", text)
    return text.strip().splitlines()[0][:160] if text.strip() else "(no reason)"


def check_jobs(
    cluster: LocalCluster, sent: dict[str, dict[str, Any]], wait: float = 15.0
) -> tuple[bool, list[str], dict[str, int]]:
    """All sent jobs with their fields on every server (followers may lag: retried for ``wait``)."""
    deadline = time.monotonic() + wait
    while True:
        problems: list[str] = []
        present: dict[str, int] = {}
        for server in cluster.servers:
            try:
                stored = fetch_jobs(server)
            except (*NETWORK_ERRORS, RuntimeError, ValueError) as exc:
                problems.append(f"{server.name}: cannot list jobs: {exc}")
                continue
            present[server.name] = sum(1 for name in sent if name in stored)
            for name, job in sent.items():
                have = stored.get(name)
                if have is None:
                    problems.append(f"{server.name}: job {name} is missing")
                    continue
                for key in CHECKED_FIELDS:
                    if have.get(key) != job.get(key):
                        problems.append(f"{server.name}: job {name} field {key}: {have.get(key)!r} != {job.get(key)!r}")
        if not problems or time.monotonic() > deadline:
            return not problems, problems, present
        time.sleep(0.5)


def _tick_of(run_id: str) -> int | None:
    tick = (run_id or "").rpartition("@")[2]
    return int(tick) if tick.isdigit() else None


def compare_replicas(
    cluster: LocalCluster,
    leader_records: Mapping[str, list[dict[str, Any]]],
    cutoff_ms: int,
    attempts: int = 3,
) -> dict[str, dict[str, Any]]:
    """Each follower's execution history (read from its own state) against the leader's.

    Only records of ticks at or before ``cutoff_ms`` are compared; a follower that differs is
    read again (up to ``attempts`` times, 2 s apart) before its differences are reported.
    """

    def rows(records: Mapping[str, list[dict[str, Any]]]) -> dict[tuple[str, str], str]:
        out = {}
        for job, items in records.items():
            for rec in items:
                tick = _tick_of(rec.get("run_id") or "")
                if tick is not None and tick <= cutoff_ms:
                    out[(job, rec["id"])] = rec.get("status", "")
        return out

    want = rows(leader_records)
    result: dict[str, dict[str, Any]] = {}
    for server in cluster.servers:
        if not server.running:
            continue
        for attempt in range(attempts):
            try:
                have = rows({job: fetch_executions(server, job) for job in leader_records})
            except (*NETWORK_ERRORS, RuntimeError, ValueError) as exc:
                result[server.name] = {"error": repr(exc)}
                break
            missing = sorted(set(want) - set(have))
            extra = sorted(set(have) - set(want))
            differ = sorted(k for k in set(want) & set(have) if want[k] != have[k])
            result[server.name] = {
                "rows": len(have),
                "missing": len(missing),
                "extra": len(extra),
                "status_differs": len(differ),
                "examples": [f"missing {k}" for k in missing[:5]]
                + [f"extra {k} ({have[k]})" for k in extra[:5]]
                + [f"{k}: leader {want[k]}, here {have[k]}" for k in differ[:5]],
            }
            if not (missing or extra or differ) or attempt == attempts - 1:
                break
            time.sleep(2)
    return result


LOG_PATTERNS = {
    "critical": re.compile(r" CRITICAL "),
    "error": re.compile(r" ERROR "),
    "traceback": re.compile(r"^Traceback"),
    "refused_already_started": re.compile(r"refused run .* it already started it"),
}


def _log_time(line: str) -> float | None:
    """The wall clock of a log line ``2026-01-01 10:00:00,123 LEVEL ...`` (local time)."""
    try:
        stamp, millis = line[:23].split(",")
        return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
    except ValueError:
        return None


def scan_logs(cluster: LocalCluster, faults: Sequence[Fault] = ()) -> dict[str, dict[str, Any]]:
    """Counts of alarming lines in every node's log, with the first CRITICAL/ERROR lines.

    ``refused_by_thawed_leader`` counts the runs a leader dispatched right after its
    ``kill -CONT`` (within 2 s, before it logged "scheduler active" again), i.e. while it still
    believed it led: the agents refused them because the new leader had started them already.
    """
    out: dict[str, dict[str, Any]] = {}
    thaws = {
        node.name: [f.recovered_at for f in faults if f.kind == "stop" and f.victim == node.name]
        for node in cluster.nodes
    }
    for node in cluster.nodes:
        counts = dict.fromkeys(LOG_PATTERNS, 0)
        counts["refused_by_thawed_leader"] = 0
        firsts: list[str] = []
        try:
            lines = node.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        became_leader: list[float] = []
        for line in lines:
            if "scheduler active:" in line:
                at = _log_time(line)
                if at is not None:
                    became_leader.append(at)
            for key, pattern in LOG_PATTERNS.items():
                if pattern.search(line):
                    counts[key] += 1
                    if key in ("critical", "error") and len(firsts) < 5:
                        firsts.append(line[:300])
                    if key == "refused_already_started":
                        at = _log_time(line)
                        for thawed in thaws.get(node.name, []):
                            if (
                                at is not None
                                and thawed - 0.1 <= at <= thawed + 2
                                and not any(thawed - 0.1 <= t <= at for t in became_leader)
                            ):
                                counts["refused_by_thawed_leader"] += 1
                                break
        out[node.name] = {**counts, "first": firsts}
    return out


@dataclass
class Accounting:
    expected: int = 0
    ran: int = 0
    missed: int = 0
    recorded: collections.Counter[str] = field(default_factory=collections.Counter)  # status -> ticks
    reasons: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unaccounted: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    ran_and_missed: list[str] = field(default_factory=list)
    ran_no_final_record: int = 0
    ran_recorded_as: collections.Counter[str] = field(default_factory=collections.Counter)
    #: examples of ticks that ran but whose history is incomplete or wrong (what the records say)
    history_examples: list[str] = field(default_factory=list)
    started_without_line: list[str] = field(default_factory=list)
    missed_count_mismatch: list[str] = field(default_factory=list)
    #: ticks that lie in the ranges of two or more missed records (counted missed more than once)
    missed_twice: list[str] = field(default_factory=list)
    by_node: collections.Counter[str] = field(default_factory=collections.Counter)
    malformed_lines: int = 0


def nearest_fault(faults: Sequence[Fault], t: float) -> str:
    if not faults:
        return "no fault"
    fault = min(faults, key=lambda f: abs(f.at - t))
    delta = t - fault.at
    return f"{abs(delta):.1f}s {'after' if delta >= 0 else 'before'} {fault.label()}"


def account(
    names: Iterable[str],
    runs_by_job: Mapping[str, list[Run]],
    records_by_job: Mapping[str, list[dict[str, Any]]],
    faults: Sequence[Fault],
    cutoff_ms: int,
    period_ms: int = 1000,
) -> Accounting:
    acc = Accounting()
    for name in names:
        runs = runs_by_job.get(name, [])
        records = records_by_job.get(name, [])
        seen: dict[str, Run] = {}
        for run in runs:
            if run.run_id in seen:
                first = seen[run.run_id]
                acc.duplicates.append(
                    {
                        "run_id": run.run_id,
                        "nodes": [first.node, run.node],
                        "starts": [fmt_wall(first.start), fmt_wall(run.start)],
                        "near": nearest_fault(faults, run.tick_ms / 1000),
                    }
                )
            else:
                seen[run.run_id] = run
        ticks_ran = {run.tick_ms: run for run in seen.values() if run.tick_ms <= cutoff_ms}
        for run in ticks_ran.values():
            acc.by_node[run.node] += 1
        by_run: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        missed_ranges: list[tuple[int, int, int, str]] = []
        for rec in records:
            by_run[rec.get("run_id") or ""].append(rec)
            if rec.get("status") == "missed":
                match = MISSED_RE.search(rec.get("error") or "")
                if match is None:
                    acc.missed_count_mismatch.append(f"{name}: unparsable missed record {rec.get('error')!r}")
                    continue
                count, lo, hi = int(match.group(1)), iso_ms(match.group(2)), iso_ms(match.group(3))
                assert lo is not None and hi is not None
                missed_ranges.append((lo, hi, count, rec.get("error") or ""))
                span = (hi - lo) // period_ms + 1
                if span != count:
                    acc.missed_count_mismatch.append(f"{name}: {rec.get('error')} (its range holds {span} ticks)")
        # Records that say a run started although the job's file has no line for it.
        for rec in records:
            if rec.get("status") in ("success", "running") and rec.get("run_id") and rec["run_id"] not in seen:
                tick = rec["run_id"].rpartition("@")[2]
                if tick.isdigit() and int(tick) <= cutoff_ms:
                    acc.started_without_line.append(f"{rec['run_id']} {rec.get('status')} on {rec.get('node_name')}")
        if not ticks_ran:
            continue
        first, last = min(ticks_ran), max(ticks_ran)
        for tick in range(first, last + 1, period_ms):
            acc.expected += 1
            run_id = f"{name}@{tick}"
            in_missed = [r for r in missed_ranges if r[0] <= tick <= r[1]]
            if tick in ticks_ran:
                acc.ran += 1
                here = by_run.get(run_id, [])
                final = [r for r in here if r.get("status") not in ("running", "missed")]
                wrong = [r for r in final if r.get("status") != "success"]
                if not final:
                    acc.ran_no_final_record += 1
                for rec in wrong:
                    acc.ran_recorded_as[rec.get("status", "?")] += 1
                if not final or wrong:
                    run = ticks_ran[tick]
                    says = "; ".join(
                        f"{r.get('status')} on {r.get('node_name')} {(r.get('error') or '')[:100]!r}" for r in here
                    )
                    acc.history_examples.append(
                        f"{run_id} ran on {run.node} at {fmt_wall(run.start)}, history: {says or 'no record'}"
                        f" ({nearest_fault(faults, run.start)})"
                    )
                if in_missed:
                    acc.ran_and_missed.append(f"{run_id}: ran, and counted in '{in_missed[0][3]}'")
                continue
            if len(in_missed) > 1:
                acc.missed_twice.append(f"{run_id}: in {len(in_missed)} missed records: {[r[3] for r in in_missed]}")
            if in_missed:
                acc.missed += 1
                continue
            explained = [
                r for r in by_run.get(run_id, []) if r.get("status") in ("skipped", "lost", "failed") and r.get("error")
            ]
            if explained:
                rec = explained[0]
                acc.recorded[rec["status"]] += 1
                acc.reasons[(rec["status"], normalize_reason(rec.get("error", "")))] += 1
                continue
            says = [
                f"{r.get('status')} id={r.get('id')} node={r.get('node_name')} kind={r.get('kind')} "
                f"error={(r.get('error') or '')[:120]!r}"
                for r in by_run.get(run_id, [])
            ]
            acc.unaccounted.append(
                {
                    "job": name,
                    "tick": tick,
                    "tick_time": fmt_wall(tick / 1000),
                    "records": says or ["no execution record of this run id"],
                    "near": nearest_fault(faults, tick / 1000),
                }
            )
    return acc


def failover_times(faults: Sequence[Fault], all_runs: Sequence[Run], horizon: float = 60.0) -> list[dict[str, Any]]:
    """Per fault: the first run of a tick scheduled after it (seconds from the fault, and late)."""
    ordered = sorted(all_runs, key=lambda r: r.start)
    out = []
    for fault in faults:
        first = next(
            (r for r in ordered if r.tick_ms / 1000 > fault.at and fault.at <= r.start <= fault.at + horizon), None
        )
        out.append(
            {
                "fault": fault.label(),
                "kind": fault.kind,
                "victim": fault.victim,
                "leader_after": fault.leader_after,
                "failover_s": round(first.start - fault.at, 3) if first else None,
                "first_tick": fmt_wall(first.tick_ms / 1000) if first else None,
                "late_s": round(first.start - first.tick_ms / 1000, 3) if first else None,
            }
        )
    return out


# ----------------------------------------------------------------------------------------------
# One whole run
# ----------------------------------------------------------------------------------------------
@dataclass
class ChaosResult:
    seed: int
    jobs: int
    chaos_seconds: float
    faults: list[Fault]
    acc: Accounting
    failovers: list[dict[str, Any]]
    jobs_ok: bool
    job_problems: list[str]
    jobs_present: dict[str, int]
    stops: dict[str, dict[str, Any]]
    wall_seconds: float
    workdir: str
    phases: dict[str, float]
    replicas: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def replica_differences(self) -> int:
        return sum(
            v.get("missing", 0) + v.get("extra", 0) + v.get("status_differs", 0) + (1 if "error" in v else 0)
            for v in self.replicas.values()
        )

    @property
    def failover_values(self) -> list[float]:
        return [f["failover_s"] for f in self.failovers if f["failover_s"] is not None]

    def summary(self) -> dict[str, Any]:
        values = self.failover_values
        acc = self.acc
        return {
            "bench": "chaos",
            "seed": self.seed,
            "jobs": self.jobs,
            "chaos_s": round(self.chaos_seconds, 1),
            "faults": len(self.faults),
            "kills": sum(1 for f in self.faults if f.kind == "kill"),
            "stops": sum(1 for f in self.faults if f.kind == "stop"),
            "ticks_expected": acc.expected,
            "ran": acc.ran,
            "missed": acc.missed,
            "skipped": acc.recorded.get("skipped", 0),
            "lost": acc.recorded.get("lost", 0),
            "failed": acc.recorded.get("failed", 0),
            "unaccounted": len(acc.unaccounted),
            "duplicates": len(acc.duplicates),
            "ran_no_final_record": acc.ran_no_final_record,
            "started_without_line": len(acc.started_without_line),
            "ran_and_missed": len(acc.ran_and_missed),
            "missed_twice": len(acc.missed_twice),
            "jobs_ok": self.jobs_ok,
            "replica_differences": self.replica_differences,
            "log_critical": sum(v["critical"] for v in self.logs.values()),
            "log_errors": sum(v["error"] + v["traceback"] for v in self.logs.values()),
            "redispatch_refused_by_agent": sum(v["refused_already_started"] for v in self.logs.values()),
            "dispatched_by_thawed_leader": sum(v["refused_by_thawed_leader"] for v in self.logs.values()),
            "failover_worst_s": max(values) if values else None,
            "failover_median_s": round(statistics.median(values), 3) if values else None,
            "failovers_without_run": sum(1 for f in self.failovers if f["failover_s"] is None),
            "stop_max_s": max((s.get("seconds", 0) for s in self.stops.values()), default=None),
            "ungraceful_stops": [n for n, s in self.stops.items() if not s.get("graceful", False)],
            "wall_s": round(self.wall_seconds, 1),
        }

    @property
    def ok(self) -> bool:
        return not self.acc.duplicates and not self.acc.unaccounted and self.jobs_ok

    def save(self, path: Path) -> None:
        """Everything needed to study a run afterwards (the node logs are next to it)."""
        acc = self.acc
        payload = {
            "summary": self.summary(),
            "faults": [dataclasses.asdict(f) for f in self.faults],
            "failovers": self.failovers,
            "duplicates": acc.duplicates,
            "unaccounted": acc.unaccounted,
            "reasons": [[status, reason, n] for (status, reason), n in acc.reasons.most_common()],
            "history_examples": acc.history_examples,
            "ran_and_missed": acc.ran_and_missed,
            "missed_twice": acc.missed_twice,
            "started_without_line": acc.started_without_line,
            "missed_count_mismatch": acc.missed_count_mismatch,
            "job_problems": self.job_problems,
            "replicas": self.replicas,
            "logs": self.logs,
            "stops": self.stops,
        }
        with contextlib.suppress(OSError):
            path.write_text(json.dumps(payload, indent=1, default=str))

    def failure_message(self, limit: int = 40) -> str:
        lines = [f"chaos run failed (seed={self.seed}, work dir {self.workdir})"]
        if self.acc.duplicates:
            lines.append(f"{len(self.acc.duplicates)} duplicate run id(s):")
            lines += [f"  {d}" for d in self.acc.duplicates[:limit]]
        if self.acc.unaccounted:
            lines.append(f"{len(self.acc.unaccounted)} unaccounted tick(s):")
            lines += [f"  {u}" for u in self.acc.unaccounted[:limit]]
        if not self.jobs_ok:
            lines.append("job definitions:")
            lines += [f"  {p}" for p in self.job_problems[:limit]]
        lines.append("faults: " + "; ".join(f.label() for f in self.faults))
        return "\n".join(lines)


def run(
    *,
    seconds: float,
    jobs: int,
    seed: int,
    workdir: Path,
    settle: float = 5.0,
    gap: tuple[float, float] = (2.0, 5.0),
    hold: tuple[float, float] = (1.0, 3.0),
    kinds: Sequence[str] = ("kill", "stop"),
    catchup: str = "latest",
    compaction_entries: int = 0,
    overlap: bool = False,
    say: Callable[[str], None] = print,
) -> ChaosResult:
    """The whole chaos run in ``workdir``; every process it starts is stopped before it returns."""
    t_begin = time.monotonic()
    phases: dict[str, float] = {}
    rng = random.Random(seed)
    out_dir = workdir / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {"DKRON_RAFT_COMPACTION_ENTRIES": str(compaction_entries)} if compaction_entries else {}
    cluster = LocalCluster(
        workdir / "cluster",
        server_args=["--retention-count", "1000000", "--log-level", "info"],
        env=env,
    )
    stops: dict[str, dict[str, Any]] = {}
    replicas: dict[str, dict[str, Any]] = {}
    logs: dict[str, dict[str, Any]] = {}
    with cluster:
        t0 = time.monotonic()
        cluster.start(timeout=180)
        phases["start_s"] = time.monotonic() - t0
        say(f"cluster of 3 servers + 2 agents ready in {phases['start_s']:.1f}s (work dir {workdir})")

        t0 = time.monotonic()
        sent = {job_name(i): job_spec(i, out_dir, catchup) for i in range(jobs)}
        for job in sent.values():
            post_with_retry(cluster, "/v1/jobs", job)
        phases["create_s"] = time.monotonic() - t0
        say(f"{jobs} jobs created in {phases['create_s']:.1f}s; warming up 3 s")
        time.sleep(3)

        say(f"chaos for {seconds:.0f}s (seed {seed})")
        t0 = time.monotonic()
        faults = run_chaos(cluster, rng, seconds, gap=gap, hold=hold, kinds=kinds, overlap=overlap, say=say)
        chaos_seconds = time.monotonic() - t0

        t0 = time.monotonic()
        for node in cluster.nodes:  # nothing should be down now; make sure
            node.thaw()
            if not node.running:
                node.start()
        time.sleep(settle)
        leader = cluster.wait_ready(timeout=90)
        cutoff_ms = int(time.time() - 3) * 1000
        say(f"settled; final leader {leader.name}; reading histories and job definitions")
        records: dict[str, list[dict[str, Any]]] = {}
        for name in sent:
            for attempt in range(5):
                try:
                    records[name] = fetch_executions(leader, name)
                    break
                except (*NETWORK_ERRORS, RuntimeError, ValueError):
                    if attempt == 4:
                        raise
                    leader = cluster.find_leader(timeout=15) or leader
        jobs_ok, problems, present = check_jobs(cluster, sent)
        replicas = compare_replicas(cluster, records, cutoff_ms - 2000)
        phases["settle_read_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        stops = cluster.stop_all(timeout=40)
        phases["stop_s"] = time.monotonic() - t0
        logs = scan_logs(cluster, faults)

    runs_by_job: dict[str, list[Run]] = {}
    malformed = 0
    for name in sent:
        runs_by_job[name], bad = read_runs(out_dir / f"{name}.runs")
        malformed += bad
    acc = account(sent, runs_by_job, records, faults, cutoff_ms)
    acc.malformed_lines = malformed
    all_runs = [run for runs in runs_by_job.values() for run in runs]
    result = ChaosResult(
        seed=seed,
        jobs=jobs,
        chaos_seconds=chaos_seconds,
        faults=faults,
        acc=acc,
        failovers=failover_times(faults, all_runs),
        jobs_ok=jobs_ok,
        job_problems=problems,
        jobs_present=present,
        stops=stops,
        wall_seconds=time.monotonic() - t_begin,
        workdir=str(workdir),
        phases={k: round(v, 1) for k, v in phases.items()},
        replicas=replicas,
        logs=logs,
    )
    result.save(workdir / "result.json")
    return result


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def report(result: ChaosResult, limit: int = 30) -> str:
    s = result.summary()
    acc = result.acc
    lines = ["", "faults and failover (fault -> first run of a tick scheduled after it):"]
    if result.failovers:
        lines.append(
            table(
                [
                    (f["fault"], f["leader_after"], f["failover_s"], f["first_tick"], f["late_s"])
                    for f in result.failovers
                ],
                ["fault", "leader after", "failover s", "first tick", "late s"],
            )
        )
    else:
        lines.append("  (no fault)")
    accounted = s["ran"] + s["missed"] + s["skipped"] + s["lost"] + s["failed"]
    lines += [
        "",
        table(
            [
                ("ticks expected", s["ticks_expected"]),
                ("  ran", s["ran"]),
                ("  missed (in a 'missed' record's range)", s["missed"]),
                ("  skipped (record with reason)", s["skipped"]),
                ("  lost (record with reason)", s["lost"]),
                ("  failed (record with reason)", s["failed"]),
                ("  UNACCOUNTED", s["unaccounted"]),
                ("accounted", f"{accounted} / {s['ticks_expected']}"),
                ("duplicate run ids", s["duplicates"]),
                ("runs per agent", dict(acc.by_node)),
                ("jobs present on every server", f"{'yes' if result.jobs_ok else 'NO'} {result.jobs_present}"),
                ("faults (kill -9 / STOP)", f"{s['faults']} ({s['kills']} / {s['stops']})"),
                ("failover worst / median s", f"{s['failover_worst_s']} / {s['failover_median_s']}"),
                ("ran, history has no final record", s["ran_no_final_record"]),
                ("ran, history says", dict(acc.ran_recorded_as)),
                ("history says started, no run in file", s["started_without_line"]),
                ("ran and also counted missed", s["ran_and_missed"]),
                ("counted missed by two or more records", s["missed_twice"]),
                ("malformed lines in run files", acc.malformed_lines),
                ("replicas: history rows differing from the leader's", s["replica_differences"]),
                ("re-dispatch refused by an agent (already started)", s["redispatch_refused_by_agent"]),
                ("  of which by a leader just after kill -CONT", s["dispatched_by_thawed_leader"]),
                ("CRITICAL / ERROR lines in node logs", f"{s['log_critical']} / {s['log_errors']}"),
                ("graceful stop (s) per node", {n: v.get("seconds") for n, v in result.stops.items()}),
                ("phases (s)", result.phases),
            ],
            ["figure", "value"],
        ),
    ]
    if acc.reasons:
        lines += ["", "reasons given by skipped/lost/failed records (ticks that did not run):"]
        lines += [f"  {count:5d}  {status}: {reason}" for (status, reason), count in acc.reasons.most_common()]
    if acc.duplicates:
        lines += ["", f"DUPLICATES ({len(acc.duplicates)}):"] + [f"  {d}" for d in acc.duplicates[:limit]]
    if acc.unaccounted:
        lines += ["", f"UNACCOUNTED TICKS ({len(acc.unaccounted)}), with what the records say:"]
        for item in acc.unaccounted[:limit]:
            lines.append(f"  {item['job']} tick {item['tick_time']} ({item['tick']}), {item['near']}")
            lines += [f"      {text}" for text in item["records"]]
        if len(acc.unaccounted) > limit:
            lines.append(f"  ... and {len(acc.unaccounted) - limit} more")
        per_fault = collections.Counter(item["near"].split(" ", 2)[2] for item in acc.unaccounted)
        lines.append("  unaccounted ticks by nearest fault:")
        lines += [f"    {count:4d}  {fault}" for fault, count in per_fault.most_common()]
    for title, items in (
        ("history says started, but the job's file has no run", acc.started_without_line),
        ("ran, and also counted in a missed record", acc.ran_and_missed),
        ("missed records whose count disagrees with their range", acc.missed_count_mismatch),
        ("ticks counted missed by two or more missed records", acc.missed_twice),
        ("ran, but the history has no final record or a wrong one", acc.history_examples),
    ):
        if items:
            lines += ["", f"{title} ({len(items)}):"] + [f"  {x}" for x in items[:limit]]
    if not result.jobs_ok:
        lines += ["", "JOB DEFINITIONS:"] + [f"  {p}" for p in result.job_problems[:limit]]
    if result.replica_differences:
        lines += ["", "REPLICAS whose history differs from the final leader's (ticks before the cut-off):"]
        for name, info in result.replicas.items():
            if info.get("missing") or info.get("extra") or info.get("status_differs") or "error" in info:
                brief = {k: v for k, v in info.items() if k != "examples"}
                lines.append(f"  {name}: {brief}")
                lines += [f"      {x}" for x in info.get("examples", [])]
    alarming = {n: v for n, v in result.logs.items() if v["critical"] or v["error"] or v["traceback"]}
    if alarming:
        lines += ["", "alarming lines in node logs (first few per node):"]
        for name, info in alarming.items():
            counts = f"{info['critical']} CRITICAL, {info['error']} ERROR, {info['traceback']} tracebacks"
            lines.append(f"  {name}: {counts}")
            lines += [f"      {x}" for x in info["first"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="chaos duration (default 3)")
    parser.add_argument("--jobs", type=int, default=50, help="number of @every 1s jobs (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of calm before the checks")
    parser.add_argument("--gap", type=float, nargs=2, default=(2.0, 5.0), help="calm between faults, min max (s)")
    parser.add_argument("--hold", type=float, nargs=2, default=(1.0, 3.0), help="time down per fault, min max (s)")
    parser.add_argument("--kinds", default="kill,stop", help="fault kinds, comma-separated: kill,stop")
    parser.add_argument(
        "--catchup", default="latest", choices=[*CATCHUP_POLICIES, "mixed"], help="the jobs' catchup policy"
    )
    parser.add_argument(
        "--compaction-entries",
        type=int,
        default=0,
        help="DKRON_RAFT_COMPACTION_ENTRIES for the servers (0: the default; e.g. 200 compacts often)",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="recover victims in the background: faults may overlap and the quorum may be lost",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="work dir (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (node logs, run files)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dkron-chaos-"))
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not set(kinds) <= {"kill", "stop"}:
        parser.error("--kinds takes kill and/or stop")
    print(f"chaos: seed {seed}, {args.jobs} jobs, {args.minutes:g} min, load1 {os.getloadavg()[0]:.2f}", flush=True)
    result = None
    try:
        result = run(
            seconds=args.minutes * 60,
            jobs=args.jobs,
            seed=seed,
            workdir=workdir,
            settle=args.settle,
            gap=tuple(args.gap),
            hold=tuple(args.hold),
            kinds=kinds,
            catchup=args.catchup,
            compaction_entries=args.compaction_entries,
            overlap=args.overlap,
            say=lambda text: print(text, flush=True),
        )
    finally:
        # Kept when asked, and whenever something went wrong (the node logs are in it).
        if result is not None and result.ok and not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif result is None or not result.ok or args.keep:
            print(f"work dir kept: {workdir}", flush=True)
    print(report(result))
    print("verdict:", "PASS" if result.ok else "FAIL")
    print(json.dumps(result.summary(), separators=(",", ":")), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
