#!/usr/bin/env python3
"""Store size: server memory and API latency with many jobs and executions; job creation rate.

1. Fills a fresh data dir OFFLINE through the same code path Raft uses: it creates
   ``dkron.store.state.StateMachine(<data_dir>/state.db)`` and calls ``.apply(index, "put_job",
   ...)`` per job (each job first normalised by ``dkron.jobs.validate_job``, as the API does) and
   ``.apply(index, "record", ...)`` with batches of executions (default 5,000 per command), with
   increasing indexes. Filling 1,000,000 executions through HTTP would take far too long.
   Afterwards ``meta.applied_index`` is reset to 0: the agent starts with an empty Raft journal
   whose indexes restart at 1, and the state machine skips (as "replayed") every entry whose index
   is <= the stored one, so without the reset the agent's first N writes would be no-ops.
2. Starts ``dkron agent --server`` on that data dir (``--retention-count`` raised to keep every
   execution) and measures its RSS after start, then median / p95 of 30 requests each of: a
   50-row job page, a page deep in the list, sorted by ``next`` and by ``success_count`` DESC, a
   ``q=`` search, one job, and an executions page of a job; then RSS again.
3. Creates ``--create`` new jobs through the real HTTP API (``POST /v1/jobs`` from
   ``--create-threads`` keep-alive client threads) and reports the rate.

Targets: RSS <= 200 MB at 10,000 jobs + 1,000,000 executions; 50-row page p95 <= 50 ms at
100,000 jobs (second mode: ``--jobs 100000 --executions 0``); creation >= 500 jobs/s.

Examples:
    .venv/bin/python bench/bench_store.py                                  # 10k jobs, 1M executions
    .venv/bin/python bench/bench_store.py --jobs 100000 --executions 0     # 100k jobs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import re
import resource
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_RSS_MB = 200.0
TARGET_PAGE_P95_MS = 50.0
TARGET_CREATE_PER_S = 500.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10_000, help="jobs to fill (default 10,000)")
    p.add_argument("--executions", type=int, default=1_000_000, help="executions spread over the jobs (default 1M)")
    p.add_argument("--batch", type=int, default=5_000, help="executions per 'record' command (default 5,000)")
    p.add_argument(
        "--retention-count",
        type=int,
        default=None,
        help="executions kept per job, for the fill and the agent (default: max(100, per-job count))",
    )
    p.add_argument("--requests", type=int, default=30, help="timed requests per query (default 30)")
    p.add_argument("--create", type=int, default=5_000, help="jobs to create through POST /v1/jobs (0 = skip)")
    p.add_argument("--create-threads", type=int, default=8, help="client threads creating jobs (default 8)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="reuse a data dir filled by an earlier run with --keep (skips the fill; the created "
        "jobs of that run are still in it)",
    )
    p.add_argument(
        "--py-spy", metavar="PATH", default=None, help="py-spy executable: profile the agent during the creation phase"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (data dir and agent log)")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.executions < 0 or args.batch < 1 or args.requests < 1 or args.create < 0:
        p.error("--jobs, --batch, --requests must be >= 1; --executions and --create >= 0")
    if args.jobs > 1_000_000 or args.executions > 20_000_000 or args.create > 100_000:
        p.error("bounded: --jobs <= 1M, --executions <= 20M, --create <= 100k")
    return args


def job_name(i: int) -> str:
    return f"job-{i:06d}"


def job_payload(i: int, prefix: str = "job") -> dict[str, Any]:
    """A realistic job whose yearly schedule never fires during the benchmark (Jan 1, varied times)."""
    return {
        "name": f"{prefix}-{i:06d}",
        "displayname": f"Report {i} for team {i % 20}",
        "schedule": f"{i % 60} {(i // 60) % 60} {(i // 3600) % 24} 1 1 *",
        "executor": "shell",
        "executor_config": {"command": f"/usr/local/bin/report --id {i}"},
        "owner": f"team-{i % 20}",
        "metadata": {"team": f"team-{i % 20}", "tier": ("gold", "silver", "bronze")[i % 3]},
        "tags": {"role": "worker"},
    }


def fill(data_dir: Path, jobs: int, executions: int, batch: int, keep: int) -> dict[str, Any]:
    from dkron.jobs import format_time, validate_job
    from dkron.plugins import load_plugins
    from dkron.schedule import parse_schedule
    from dkron.store.state import StateMachine

    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    plugins = load_plugins()
    sm = StateMachine(str(data_dir / "state.db"))
    index = 0
    now = datetime.now(UTC)
    now_iso = format_time(now)
    t0 = time.monotonic()
    for i in range(jobs):
        job = validate_job(job_payload(i), executors=plugins.executors, processors=plugins.processors)
        nxt = parse_schedule(job["schedule"], timezone=job["timezone"], job_name=job["name"]).next_after(now)
        index += 1
        result = sm.apply(
            index, "put_job", {"job": job, "now": now_iso, "next": format_time(nxt), "reset_schedule": True}
        )
        if isinstance(result, dict) and "error" in result:
            raise RuntimeError(f"put_job {job['name']}: {result}")
        if i and i % 20_000 == 0:
            print(f"  fill: {i} jobs ({i / (time.monotonic() - t0):.0f}/s)", flush=True)
    jobs_s = time.monotonic() - t0
    # executions, job-major: job j gets per_job (+1 for the first `extra` jobs), one a minute back in time
    t1 = time.monotonic()
    per_job, extra = divmod(executions, jobs)
    pending: list[dict[str, Any]] = []
    done = 0
    commands = 0

    def flush() -> None:
        nonlocal index, pending, commands
        if not pending:
            return
        index += 1
        commands += 1
        sm.apply(index, "record", {"executions": pending, "keep_per_job": keep})
        pending = []

    for j in range(jobs):
        name = job_name(j)
        count = per_job + (1 if j < extra else 0)
        for e in range(count):
            sched = now - timedelta(minutes=count - e, seconds=j % 60)
            ms = int(sched.timestamp() * 1000)
            failed = (j * 7 + e) % 10 == 0
            started = sched + timedelta(milliseconds=3 + (j + e) % 40)
            finished = started + timedelta(milliseconds=20 + (j * e) % 500)
            output = f"report {j} run {e}: {'error: upstream timeout' if failed else 'ok, 42 rows'}\n"
            pending.append(
                {
                    "id": f"{ms * 1_000_000}-node1",
                    "job_name": name,
                    "run_id": f"{name}@{ms}",
                    "group": ms * 1_000_000,
                    "attempt": 1,
                    "node_name": "node1",
                    "kind": "scheduled",
                    "scheduled_at": format_time(sched),
                    "started_at": format_time(started),
                    "finished_at": format_time(finished),
                    "status": "failed" if failed else "success",
                    "success": not failed,
                    "error": "exit status 1" if failed else "",
                    "exit_code": 1 if failed else 0,
                    "output": output,
                    "output_bytes": len(output),
                }
            )
            if len(pending) >= batch:
                done += len(pending)
                flush()
                if commands % 40 == 0:
                    print(f"  fill: {done} executions ({done / (time.monotonic() - t1):.0f}/s)", flush=True)
    done += len(pending)
    flush()
    exec_s = time.monotonic() - t1
    stored_jobs = sm.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    stored_execs = sm.db.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
    applied = sm.applied_index()
    # The agent's Raft log starts empty (indexes from 1): see the module docstring.
    sm.db.execute("DELETE FROM meta WHERE key='applied_index'")
    sm.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sm.close()
    return {
        "fill_jobs_s": round(jobs_s, 1),
        "fill_jobs_per_s": round(jobs / jobs_s) if jobs_s else None,
        "fill_executions_s": round(exec_s, 1),
        "fill_executions_per_s": round(done / exec_s) if exec_s and done else None,
        "fill_commands": index,
        "fill_applied_index_before_reset": applied,
        "stored_jobs": stored_jobs,
        "stored_executions": stored_execs,
    }


def db_size_mb(data_dir: Path) -> float:
    return round(sum(p.stat().st_size for p in data_dir.glob("state.db*")) / C.MB, 1)


def time_requests(session: Any, url: str, paths: list[str], warm: int = 3) -> dict[str, Any]:
    """GET each path in turn (cycled); the first ``warm`` are not timed. Returns latency stats."""
    times: list[float] = []
    total = None
    rows = None
    for k in range(warm + len(paths)):
        path = paths[k % len(paths)] if k >= warm else paths[0]
        t0 = time.perf_counter()
        res = session.get(url + path, timeout=120)
        dt = (time.perf_counter() - t0) * 1000
        if res.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {res.status_code} {res.text[:300]}")
        if k >= warm:
            times.append(dt)
            total = res.headers.get("X-Total-Count", total)
            body = res.json()
            rows = len(body) if isinstance(body, list) else None
    times.sort()
    return {
        "p50_ms": round(C.percentile(times, 50), 1),
        "p95_ms": round(C.percentile(times, 95), 1),
        "max_ms": round(times[-1], 1),
        "rows": rows,
        "total": int(total) if total is not None else None,
    }


def db_connections(pid: int) -> int:
    """Open handles on state.db (one per SQLite connection) of the agent."""
    import psutil

    try:
        return sum(1 for f in psutil.Process(pid).open_files() if f.path.endswith("state.db"))
    except psutil.Error:
        return -1


def log_size(agent: Any) -> int:
    return agent.log_path.stat().st_size if agent.log_path.exists() else 0


def wait_scheduler_active(agent: Any, log_offset: int, timeout: float = 600) -> float | None:
    """Seconds until the log says the scheduler loaded its jobs (it reads them all at leadership)."""
    t0 = time.monotonic()
    pattern = re.compile(rb"scheduler active: (\d+) jobs")
    while time.monotonic() - t0 < timeout:
        with open(agent.log_path, "rb") as f:
            f.seek(log_offset)
            if pattern.search(f.read()):
                return time.monotonic() - t0
        if agent.proc.poll() is not None:
            raise RuntimeError(f"agent exited:\n{agent.log()}")
        time.sleep(0.1)
    return None


def create_jobs(url: str, n: int, threads: int, start: int) -> dict[str, Any]:
    import requests

    local = threading.local()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def post(i: int) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        body = job_payload(start + i, prefix="new")
        t0 = time.perf_counter()
        res = session.post(url + "/v1/jobs", json=body, timeout=60)
        dt = (time.perf_counter() - t0) * 1000
        with lock:
            if res.status_code == 201:
                latencies.append(dt)
            elif len(errors) < 5:
                errors.append(f"HTTP {res.status_code} {res.text[:200]}")
            else:
                errors.append("")

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, range(n)))
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    return {
        "created": len(latencies),
        "failed": len(errors),
        "errors": [e for e in errors if e][:5],
        "wall_s": round(wall, 2),
        "per_s": round(len(latencies) / wall, 1),
        "post_p50_ms": C.rnd(C.percentile(latencies, 50)),
        "post_p95_ms": C.rnd(C.percentile(latencies, 95)),
        "post_p99_ms": C.rnd(C.percentile(latencies, 99)),
        "client_cpu_pct": round(100 * ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    import requests

    args = parse_args(argv)
    per_job = math.ceil(args.executions / args.jobs) if args.executions else 0
    keep = args.retention_count or max(100, per_job)
    print(
        f"bench_store: {args.jobs} jobs, {args.executions} executions ({per_job}/job max), retention {keep}, "
        f"batch {args.batch}; {C.machine_line()}",
        flush=True,
    )
    if args.data_dir:
        work = Path(args.data_dir).resolve().parent
        data_dir = Path(args.data_dir).resolve()
        cleanup = lambda: None  # noqa: E731 - the caller's data dir is never removed
        filled: dict[str, Any] = {"fill": "reused " + str(data_dir)}
    else:
        work, cleanup = C.workdir("dkron-bench-store-", args.keep)
        data_dir = work / "data"
        print(f"filling {data_dir} offline via StateMachine.apply('put_job'/'record') ...", flush=True)
        filled = fill(data_dir, args.jobs, args.executions, args.batch, keep)
        print(f"  filled: {filled}", flush=True)
    result: dict[str, Any] = {**filled, "db_mb": db_size_mb(data_dir), "code": C.code_version()}
    runner = C.AgentRunner(data_dir, ["--retention-count", str(keep)], wait=600)
    log_offset = log_size(runner.agent)  # a reused data dir's log already has earlier runs
    try:
        with runner as agent:
            sampler = C.ProcSampler(agent.proc.pid).start()
            session = requests.Session()
            C.wait_leader(session, agent.url, timeout=120)
            active_s = wait_scheduler_active(agent, log_offset)
            time.sleep(2)
            result["agent_healthy_s"] = round(runner.healthy_after, 2)
            result["scheduler_loaded_s"] = C.rnd(active_s, 2)
            result["rss_after_start_mb"] = round(sampler.sample() / C.MB, 1)
            result["db_connections_after_start"] = db_connections(agent.proc.pid)
            n = args.requests
            deep = 5000 if args.jobs >= 5050 else max(0, args.jobs // 2)
            # executions of n different jobs spread over the list (cold-ish pages, as a UI user would)
            step = max(1, args.jobs // n)
            exec_jobs = [job_name(min(args.jobs - 1, k * step)) for k in range(n)]
            queries = {
                "page_0_50": ["/v1/jobs?_start=0&_end=50"] * n,
                f"page_{deep}_{deep + 50}": [f"/v1/jobs?_start={deep}&_end={deep + 50}"] * n,
                "sort_next_asc": ["/v1/jobs?_sort=next&_order=ASC&_start=0&_end=50"] * n,
                "sort_success_count_desc": ["/v1/jobs?_sort=success_count&_order=DESC&_start=0&_end=50"] * n,
                "search_q_0042": ["/v1/jobs?q=0042&_start=0&_end=50"] * n,
                "get_one_job": [f"/v1/jobs/{name}" for name in exec_jobs],
                "executions_page_0_50": [f"/v1/jobs/{name}/executions?_start=0&_end=50" for name in exec_jobs],
            }
            lat = {}
            for label, paths in queries.items():
                lat[label] = time_requests(session, agent.url, paths)
                print(f"  {label}: {lat[label]}", flush=True)
            result["latency"] = lat
            result["rss_after_reads_mb"] = round(sampler.sample() / C.MB, 1)
            result["db_connections_after_reads"] = db_connections(agent.proc.pid)
            if args.create:
                spy = None
                if args.py_spy:
                    spy = C.PySpy(args.py_spy, agent.proc.pid, 3600, work / "profile.raw")
                start = 1
                existing = session.get(agent.url + "/v1/jobs?q=new-&_start=0&_end=1", timeout=60)
                start += int(existing.headers.get("X-Total-Count", 0))
                cpu0 = sampler.cpu()
                created = create_jobs(agent.url, args.create, args.create_threads, start)
                created["server_cpu_pct"] = round(C.cpu_delta(cpu0, sampler.cpu())["server_cpu_pct"], 1)
                if spy:
                    spy.proc.send_signal(2)  # SIGINT: py-spy writes what it has and exits
                    spy.finish()
                    result["profile"] = C.summarize_profile(work / "profile.raw")
                result["create"] = created
                print(f"  create: {created}", flush=True)
                result["rss_after_create_mb"] = round(sampler.sample() / C.MB, 1)
            result["rss_peak_mb"] = round(sampler.peak_rss / C.MB, 1)
            sampler.stop()
        result["agent_stop_s"] = C.rnd(runner.stop_seconds)
    finally:
        runner.stop()
        if args.keep:
            print(f"kept {work} (agent log {runner.agent.log_path})")
        cleanup()

    lat = result["latency"]
    big_execs = args.jobs >= 10_000 and args.executions >= 1_000_000
    big_jobs = args.jobs >= 100_000
    rss_worst = max(result["rss_after_start_mb"], result["rss_after_reads_mb"])
    rows: list[tuple[Any, ...]] = [
        (
            "store",
            f"{result.get('stored_jobs', '?')} jobs, {result.get('stored_executions', '?')} executions, "
            f"state.db {result['db_mb']} MB",
            "",
            "",
        ),
        (
            "fill (offline, StateMachine.apply)",
            f"jobs {result.get('fill_jobs_per_s')}/s, executions {result.get('fill_executions_per_s')}/s",
            "",
            "",
        ),
        (
            "agent healthy / scheduler loaded (s)",
            f"{result['agent_healthy_s']} / {result['scheduler_loaded_s']}",
            "",
            "",
        ),
        ("RSS after start (MB)", result["rss_after_start_mb"], "", ""),
        ("RSS after reads (MB)", result["rss_after_reads_mb"], "", ""),
        (
            "RSS max(after start, after reads) (MB)",
            rss_worst,
            f"<= {TARGET_RSS_MB:.0f}" if big_execs else "",
            C.verdict(rss_worst <= TARGET_RSS_MB) if big_execs else "",
        ),
        (
            "SQLite connections after start / after reads",
            f"{result['db_connections_after_start']} / {result['db_connections_after_reads']}",
            "",
            "",
        ),
    ]
    for label, stats in lat.items():
        target = ""
        verdict = ""
        if label == "page_0_50" and big_jobs:
            target = f"p95 <= {TARGET_PAGE_P95_MS:.0f}"
            verdict = C.verdict(stats["p95_ms"] <= TARGET_PAGE_P95_MS)
        rows.append(
            (
                f"GET {label} p50 / p95 (ms) [rows/total]",
                f"{stats['p50_ms']} / {stats['p95_ms']}  [{stats['rows']}/{stats['total']}]",
                target,
                verdict,
            )
        )
    if "create" in result:
        c = result["create"]
        rows.append(
            (
                f"POST /v1/jobs x{args.create}, {args.create_threads} threads (jobs/s)",
                f"{c['per_s']} ({c['created']} ok, {c['failed']} failed)",
                f">= {TARGET_CREATE_PER_S:.0f}",
                C.verdict(c["per_s"] >= TARGET_CREATE_PER_S),
            )
        )
        rows.append(
            (
                "  POST latency p50 / p95 / p99 (ms)",
                f"{c['post_p50_ms']} / {c['post_p95_ms']} / {c['post_p99_ms']}",
                "",
                "",
            )
        )
        rows.append(
            ("  server / client CPU % during creation", f"{c['server_cpu_pct']} / {c['client_cpu_pct']}", "", "")
        )
        rows.append(("RSS after create (MB)", result["rss_after_create_mb"], "", ""))
    rows.append(("RSS peak (MB)", result["rss_peak_mb"], "", ""))
    print(
        f"\nbench_store results ({args.jobs} jobs, {args.executions} executions filled offline through "
        f"StateMachine.apply, {args.requests} requests per query)"
    )
    C.print_table(rows, ["metric", "value", "target", "verdict"])
    if "profile" in result:
        C.print_profile(result["profile"], "py-spy profile of the agent during job creation")
    C.print_json_line(
        {
            "bench": "bench_store",
            "jobs": args.jobs,
            "executions": args.executions,
            "retention_count": keep,
            "fill_method": "offline StateMachine.apply put_job/record, increasing indexes; applied_index reset to 0",
            "targets": {
                "rss_mb": TARGET_RSS_MB if big_execs else None,
                "page_p95_ms": TARGET_PAGE_P95_MS if big_jobs else None,
                "create_per_s": TARGET_CREATE_PER_S if args.create else None,
            },
            **{k: v for k, v in result.items() if k != "profile"},
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
