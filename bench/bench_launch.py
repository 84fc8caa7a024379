#!/usr/bin/env python3
"""Launch lateness: N jobs firing every second on one real server node.

Starts ``dkron agent --server`` on free 127.0.0.1 ports with a fresh data dir, creates N jobs
(schedule ``* * * * * *``, shell executor) through the HTTP API, waits a warm-up, then
measures a window of S whole seconds. Each run appends ``<DKRON_RUN_ID> <wall clock>`` to a
file the moment its process starts (see ``_common.make_stamp``). ``DKRON_RUN_ID`` is
``<job>@<scheduled unix ms>``, so lateness = process start - scheduled second, per launch.

Reported: launches achieved vs expected in the window (a launch counts if its process started
before window end + grace), lateness p50/p99/max, server RSS (peak, final), server CPU% over
the window, and a cross-check against the executions stored for a few jobs.
Targets: >= 95 % of launches, p99 lateness <= 100 ms.

Example:  .venv/bin/python bench/bench_launch.py --jobs 1000 --seconds 20 --repeat 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_LAUNCH_PCT = 95.0
TARGET_P99_MS = 100.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1000, help="number of every-second jobs (default 1000)")
    p.add_argument("--seconds", type=int, default=30, help="measurement window in seconds (default 30)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after the last job is created (default 10)")
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="a launch counts if it started before window end + grace seconds (default 5)",
    )
    p.add_argument("--repeat", type=int, default=1, help="run K times (fresh agent each) and report medians")
    p.add_argument(
        "--stamp",
        choices=C.STAMP_KINDS,
        default="auto",
        help="timing command: c (static C helper, cheapest), bash ($EPOCHREALTIME) or date; "
        "auto = c if gcc exists, else bash",
    )
    p.add_argument("--sample-jobs", type=int, default=5, help="jobs whose stored executions are cross-checked")
    p.add_argument("--create-threads", type=int, default=8, help="HTTP client threads creating the jobs")
    p.add_argument(
        "--max-concurrent-runs",
        type=int,
        default=None,
        help="pass --max-concurrent-runs to the agent (default: the agent's own default)",
    )
    p.add_argument(
        "--agent-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for 'dkron agent' (repeatable, e.g. --agent-arg=--log-level=debug)",
    )
    p.add_argument(
        "--py-spy",
        metavar="PATH",
        default=None,
        help="py-spy executable: profile the agent during the window and print a summary",
    )
    p.add_argument("--py-spy-gil", action="store_true", help="profile only samples holding the GIL")
    p.add_argument("--keep", action="store_true", help="keep the work dir (data dir, stamp file, agent log)")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.seconds < 1 or args.repeat < 1 or args.warmup < 0 or args.grace < 0:
        p.error("--jobs, --seconds, --repeat must be >= 1; --warmup and --grace >= 0")
    if args.seconds > 600 or args.repeat > 20:
        p.error("bounded: --seconds <= 600, --repeat <= 20")
    return args


def _iso_ms(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def create_jobs(url: str, n: int, threads: int, executor_config: dict[str, str]) -> tuple[float, list[str]]:
    import requests

    local = threading.local()
    names = [f"bench-{i:05d}" for i in range(n)]

    def post(name: str) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        body = {"name": name, "schedule": "* * * * * *", "executor": "shell", "executor_config": executor_config}
        for attempt in range(5):
            res = session.post(url + "/v1/jobs", json=body, timeout=30)
            if res.status_code == 201:
                return
            if res.status_code != 503 or attempt == 4:
                raise RuntimeError(f"creating {name}: HTTP {res.status_code} {res.text[:300]}")
            time.sleep(0.2)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(post, name) for name in names]:
            fut.result()
    return time.monotonic() - t0, names


def cross_check(url: str, names: list[str], sample: int, stamps: dict[str, Any], w0: int, w1: int) -> dict[str, Any]:
    """Compare the stored executions of a few jobs with what their processes recorded."""
    import requests

    if sample <= 0:
        return {}
    step = max(1, len(names) // sample)
    picked = names[::step][:sample]
    session = requests.Session()
    stored_in_window = stamped_in_window = 0
    statuses: dict[str, int] = {}
    stored_late: list[float] = []
    exec_to_stamp: list[float] = []
    missing_in_store = 0
    for name in picked:
        res = session.get(f"{url}/v1/jobs/{name}/executions", params={"_start": 0, "_end": 200}, timeout=30)
        rows = res.json() if res.status_code == 200 else []
        by_run = {}
        for row in rows:
            sched = _iso_ms(row.get("scheduled_at"))
            if sched is None or not w0 <= sched < w1:
                continue
            by_run[row["run_id"]] = row
            stored_in_window += 1
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
            started = _iso_ms(row.get("started_at"))
            if started is not None:
                stored_late.append(started - sched)
        for run_id, start_ms in stamps.items():
            if run_id.rpartition("@")[0] != name:
                continue
            stamped_in_window += 1
            row = by_run.get(run_id)
            if row is None:
                missing_in_store += 1
            elif row.get("started_at"):
                exec_to_stamp.append(start_ms - _iso_ms(row["started_at"]))
    stored_late.sort()
    exec_to_stamp.sort()
    return {
        "jobs": picked,
        "stored_in_window": stored_in_window,
        "stamped_in_window": stamped_in_window,
        "stamped_but_not_stored": missing_in_store,
        "statuses": statuses,
        "stored_started_minus_scheduled_p50_ms": C.rnd(C.percentile(stored_late, 50)),
        "stored_started_minus_scheduled_p99_ms": C.rnd(C.percentile(stored_late, 99)),
        "process_start_minus_stored_started_p50_ms": C.rnd(C.percentile(exec_to_stamp, 50)),
        "process_start_minus_stored_started_p99_ms": C.rnd(C.percentile(exec_to_stamp, 99)),
    }


def one_run(args: argparse.Namespace, run_no: int) -> dict[str, Any]:
    import requests

    work, cleanup = C.workdir("dkron-bench-launch-", args.keep)
    stamp_file = work / "stamps.txt"
    kind, described, executor_config = C.make_stamp(args.stamp, work, stamp_file)
    extra = list(args.agent_arg)
    if args.max_concurrent_runs:
        extra += ["--max-concurrent-runs", str(args.max_concurrent_runs)]
    print(f"[run {run_no}] work dir {work}; timing command: {described}", flush=True)
    runner = C.AgentRunner(work / "data", extra)
    result: dict[str, Any] = {}
    code = C.code_version()  # the agent runs the working tree as it is now
    try:
        with runner as agent:
            pid = agent.proc.pid
            sampler = C.ProcSampler(pid).start()
            session = requests.Session()
            C.wait_leader(session, agent.url)
            create_s, names = create_jobs(agent.url, args.jobs, args.create_threads, executor_config)
            print(
                f"[run {run_no}] agent pid {pid} healthy after {runner.healthy_after:.1f}s; "
                f"{args.jobs} jobs created in {create_s:.1f}s ({args.jobs / create_s:.0f}/s)",
                flush=True,
            )
            w0_s = math.ceil(time.time() + args.warmup)
            w1_s = w0_s + args.seconds
            deadline = w1_s + args.grace
            C.sleep_until(w0_s)
            cpu0 = sampler.cpu()
            rss_window_start = sampler.sample()
            spy = None
            if args.py_spy:
                spy = C.PySpy(args.py_spy, pid, args.seconds, work / "profile.raw", gil=args.py_spy_gil)
            C.sleep_until(w1_s)
            cpu1 = sampler.cpu()
            window_peak = max((r for t, r in sampler.samples if w0_s <= t <= w1_s), default=0)
            C.sleep_until(deadline)
            stamps = C.analyze_stamps(stamp_file, w0_s * 1000, w1_s * 1000, deadline)
            check = cross_check(agent.url, names, args.sample_jobs, stamps["start_ms"], w0_s * 1000, w1_s * 1000)
            final_rss = sampler.sample()
            sampler.stop()
            if spy:
                spy.finish()
        runner.stop()
        cpu = C.cpu_delta(cpu0, cpu1)
        expected = args.jobs * args.seconds
        result = {
            "code": code,
            "stamp": kind,
            **C.launch_figures(stamps, expected),
            "rss_peak_mb": round(sampler.peak_rss / C.MB, 1),
            "rss_window_start_mb": round(rss_window_start / C.MB, 1),
            "rss_window_peak_mb": round(window_peak / C.MB, 1),
            "rss_final_mb": round(final_rss / C.MB, 1),
            "server_cpu_pct": round(cpu["server_cpu_pct"], 1),
            "children_cpu_pct": round(cpu["children_cpu_pct"], 1),
            "machine_busy_pct_of_one_core": round(cpu["machine_busy_pct"], 1),
            "server_threads": cpu1["threads"],
            "create_jobs_s": round(create_s, 2),
            "cross_check": check,
        }
        if spy:
            result["profile"] = C.summarize_profile(work / "profile.raw")
        result["agent_stop_s"] = C.rnd(runner.stop_seconds)
        print(f"[run {run_no}] done; agent stopped (SIGTERM) in {runner.stop_seconds:.1f}s", flush=True)
    finally:
        runner.stop()
        if args.keep:
            print(f"[run {run_no}] kept {work} (agent log: {runner.agent.log_path})")
        cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"bench_launch: {args.jobs} jobs '* * * * * *', window {args.seconds}s after {args.warmup}s warm-up, "
        f"grace {args.grace}s, repeat {args.repeat}; {C.machine_line()}",
        flush=True,
    )
    runs, med, label = C.repeat_runs(
        args.repeat,
        lambda i: one_run(args, i),
        extra=lambda r: f"server CPU {r['server_cpu_pct']}%, RSS peak {r['rss_peak_mb']} MB",
        skip=("cross_check", "profile"),
        profile_of="the agent",
    )
    ok_launch = med["achieved_pct"] >= TARGET_LAUNCH_PCT
    ok_p99 = med["lateness_p99_ms"] is not None and med["lateness_p99_ms"] <= TARGET_P99_MS
    rows = [
        (
            "launches achieved / expected",
            f"{med['achieved']:.0f} / {med['expected']:.0f} ({med['achieved_pct']}%)",
            f">= {TARGET_LAUNCH_PCT:.0f}%",
            C.verdict(ok_launch),
        ),
        ("lateness p50 (ms)", med["lateness_p50_ms"], "", ""),
        ("lateness p90 (ms)", med["lateness_p90_ms"], "", ""),
        ("lateness p99 (ms)", med["lateness_p99_ms"], f"<= {TARGET_P99_MS:.0f}", C.verdict(ok_p99)),
        ("lateness max (ms)", med["lateness_max_ms"], "", ""),
        (
            "tick median, first 5 / last 5 s (ms)",
            f"{med['tick_median_first5_ms']} / {med['tick_median_last5_ms']}",
            "",
            "",
        ),
        ("duplicate launches", med["duplicates"], "0", C.verdict(med["duplicates"] == 0)),
        ("server RSS peak / final (MB)", f"{med['rss_peak_mb']} / {med['rss_final_mb']}", "", ""),
        ("server CPU % (100 = one core)", med["server_cpu_pct"], "", ""),
        ("job processes CPU % (reaped children)", med["children_cpu_pct"], "", ""),
        ("machine busy % (200 = both cores)", med["machine_busy_pct_of_one_core"], "", ""),
    ]
    print(f"\nbench_launch results ({label}; {args.jobs} jobs, {args.seconds}s window, timing: {runs[0]['stamp']})")
    C.print_table(rows, ["metric", label, "target", "verdict"])
    for i, r in enumerate(runs, 1):
        c = r.get("cross_check") or {}
        if c:
            print(
                f"cross-check run {i} ({len(c['jobs'])} jobs via GET /v1/jobs/<name>/executions): stored "
                f"{c['stored_in_window']} / stamped {c['stamped_in_window']} in window, not stored "
                f"{c['stamped_but_not_stored']}, statuses {c['statuses']}, stored started_at - scheduled p50 "
                f"{c['stored_started_minus_scheduled_p50_ms']} / p99 {c['stored_started_minus_scheduled_p99_ms']}"
                f" ms, process start - stored started_at p50 {c['process_start_minus_stored_started_p50_ms']}"
                f" / p99 {c['process_start_minus_stored_started_p99_ms']} ms"
            )
    C.print_json_line(
        {
            "bench": "bench_launch",
            "code": runs[0]["code"],
            "jobs": args.jobs,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "grace": args.grace,
            "repeat": args.repeat,
            "stamp": runs[0]["stamp"],
            "median": med,
            "targets": {"achieved_pct": TARGET_LAUNCH_PCT, "lateness_p99_ms": TARGET_P99_MS},
            "pass": {"achieved": ok_launch, "p99": ok_p99},
            "runs": [{k: v for k, v in r.items() if k != "profile"} for r in runs],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
