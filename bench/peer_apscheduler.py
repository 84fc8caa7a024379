#!/usr/bin/env python3
"""Peer baseline: the bench_launch workload on APScheduler 3, measured the same way.

N jobs fire every second (``CronTrigger(second="*")``) in one APScheduler 3 process with the
in-memory job store (nothing persisted) and a thread pool (``--workers``, APScheduler's default
10). Each run starts the same timing command as bench_launch with the same DKRON_RUN_ID, and the
lateness (process start - scheduled second), launch counts, RSS and CPU of the scheduler
process are computed by the same code (``_common``). Compare with ``--compare`` (a file holding
bench_launch's output, e.g. ``bench_launch.py ... | tee launch.txt``): ratios Dkron / APScheduler.

APScheduler is NOT a project dependency: install it in a throwaway venv and pass its python:
    python3 -m venv /tmp/apsvenv && /tmp/apsvenv/bin/pip install 'apscheduler<4'
    .venv/bin/python bench/peer_apscheduler.py --python /tmp/apsvenv/bin/python --seconds 20

Note APScheduler's defaults: ``misfire_grace_time=1`` s (a run more than 1 s late is dropped as
"missed"), ``coalesce=True``, ``max_instances=1``; all three are options here.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

CHILD = Path(__file__).resolve().parent / "_aps_child.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--python",
        default="/tmp/apsvenv/bin/python",
        help="interpreter that has apscheduler<4 installed (default /tmp/apsvenv/bin/python)",
    )
    p.add_argument("--jobs", type=int, default=1000, help="number of every-second jobs (default 1000)")
    p.add_argument("--seconds", type=int, default=30, help="measurement window in seconds (default 30)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after the scheduler is ready (default 10)")
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="a launch counts if it started before window end + grace seconds (default 5)",
    )
    p.add_argument("--repeat", type=int, default=1, help="run K times and report medians")
    p.add_argument("--stamp", choices=C.STAMP_KINDS, default="auto", help="timing command, as in bench_launch")
    p.add_argument("--workers", type=int, default=10, help="ThreadPoolExecutor size (APScheduler default 10)")
    p.add_argument(
        "--misfire-grace",
        type=int,
        default=1,
        help="misfire_grace_time in whole s (APScheduler default 1; 0 = no limit)",
    )
    p.add_argument("--max-instances", type=int, default=1, help="max_instances per job (default 1)")
    p.add_argument(
        "--compare",
        metavar="FILE",
        default=None,
        help="bench_launch output (its last JSON line is used) to print Dkron/APScheduler ratios",
    )
    p.add_argument("--py-spy", metavar="PATH", default=None, help="py-spy executable: profile the scheduler")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.seconds < 1 or args.repeat < 1 or args.warmup < 0 or args.grace < 0:
        p.error("--jobs, --seconds, --repeat must be >= 1; --warmup and --grace >= 0")
    if args.seconds > 600 or args.repeat > 20:
        p.error("bounded: --seconds <= 600, --repeat <= 20")
    return args


def stop_child(proc: subprocess.Popen[str], timeout: float = 15.0) -> dict[str, Any]:
    """SIGTERM the scheduler, read its final counts; SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return {}
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    for line in reversed((out or "").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {}


def one_run(args: argparse.Namespace, run_no: int) -> dict[str, Any]:
    work, cleanup = C.workdir("dkron-bench-aps-", args.keep)
    stamp_file = work / "stamps.txt"
    kind, described, executor_config = C.make_stamp(args.stamp, work, stamp_file)
    argv = C.stamp_argv(executor_config)
    print(f"[run {run_no}] work dir {work}; timing command: {described}", flush=True)
    cmd = [
        args.python,
        str(CHILD),
        "--jobs",
        str(args.jobs),
        "--argv-json",
        json.dumps(argv),
        "--workers",
        str(args.workers),
        "--misfire-grace",
        str(args.misfire_grace),
        "--max-instances",
        str(args.max_instances),
    ]
    log = open(work / "apscheduler.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    counts: dict[str, Any] = {}
    try:
        ready = proc.stdout.readline() if proc.stdout else ""
        if not ready.startswith("READY"):
            proc.kill()
            proc.wait(10)
            err = (work / "apscheduler.log").read_text(errors="replace")[-3000:]
            raise SystemExit(
                f"the APScheduler child did not start ({ready!r}); is apscheduler<4 installed in {args.python}?\n{err}"
            )
        version = ready.split()[-1]
        sampler = C.ProcSampler(proc.pid).start()
        w0_s = math.ceil(time.time() + args.warmup)
        w1_s = w0_s + args.seconds
        deadline = w1_s + args.grace
        C.sleep_until(w0_s)
        cpu0 = sampler.cpu()
        spy = C.PySpy(args.py_spy, proc.pid, args.seconds, work / "profile.raw") if args.py_spy else None
        C.sleep_until(w1_s)
        cpu1 = sampler.cpu()
        C.sleep_until(deadline)
        final_rss = sampler.sample()
        sampler.stop()
        if spy:
            spy.finish()
        counts = stop_child(proc)
        stamps = C.analyze_stamps(stamp_file, w0_s * 1000, w1_s * 1000, deadline)
        cpu = C.cpu_delta(cpu0, cpu1)
        expected = args.jobs * args.seconds
        result = {
            "apscheduler": version,
            "stamp": kind,
            **C.launch_figures(stamps, expected),
            "rss_peak_mb": round(sampler.peak_rss / C.MB, 1),
            "rss_final_mb": round(final_rss / C.MB, 1),
            "server_cpu_pct": round(cpu["server_cpu_pct"], 1),
            "children_cpu_pct": round(cpu["children_cpu_pct"], 1),
            "machine_busy_pct_of_one_core": round(cpu["machine_busy_pct"], 1),
            "aps_events_whole_run": counts,
        }
        if spy:
            result["profile"] = C.summarize_profile(work / "profile.raw")
    finally:
        if proc.poll() is None:
            stop_child(proc)
        if args.keep:
            print(f"[run {run_no}] kept {work}")
        cleanup()
    return result


def load_compare(path: str, jobs: int) -> dict[str, Any] | None:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        print(f"--compare: cannot read {path}: {exc}")
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            data = json.loads(line)
            if data.get("jobs") not in (None, jobs):
                print(f"WARNING: --compare run had {data.get('jobs')} jobs, this one {jobs}: ratios are not comparable")
            return data.get("median", data)
    print(f"--compare: no JSON line in {path}")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"peer_apscheduler: {args.jobs} jobs CronTrigger(second='*'), {args.workers} pool threads, window "
        f"{args.seconds}s after {args.warmup}s warm-up, grace {args.grace}s, repeat {args.repeat}; "
        f"{C.machine_line()}",
        flush=True,
    )
    runs, med, label = C.repeat_runs(
        args.repeat,
        lambda i: one_run(args, i),
        extra=lambda r: f"scheduler CPU {r['server_cpu_pct']}%, events {r['aps_events_whole_run']}",
        skip=("profile", "aps_events_whole_run"),
        profile_of="the APScheduler process",
    )
    dk = load_compare(args.compare, args.jobs) if args.compare else None
    keys = [
        ("launches achieved %", "achieved_pct"),
        ("lateness p50 (ms)", "lateness_p50_ms"),
        ("lateness p90 (ms)", "lateness_p90_ms"),
        ("lateness p99 (ms)", "lateness_p99_ms"),
        ("lateness max (ms)", "lateness_max_ms"),
        ("duplicate launches", "duplicates"),
        ("process RSS peak (MB)", "rss_peak_mb"),
        ("process RSS final (MB)", "rss_final_mb"),
        ("process CPU % (100 = one core)", "server_cpu_pct"),
        ("job processes CPU %", "children_cpu_pct"),
        ("machine busy % (200 = both cores)", "machine_busy_pct_of_one_core"),
    ]
    rows = []
    ratios = {}
    for title, key in keys:
        row = [title, med.get(key)]
        if dk is not None:
            ours, theirs = dk.get(key), med.get(key)
            ratio = (
                round(ours / theirs, 2)
                if isinstance(ours, int | float) and isinstance(theirs, int | float) and theirs
                else None
            )
            ratios[key] = ratio
            row += [ours, ratio]
        rows.append(row)
    headers = ["metric", f"APScheduler ({label})"] + (["Dkron (--compare)", "Dkron / APScheduler"] if dk else [])
    print(
        f"\npeer_apscheduler results ({args.jobs} jobs, {args.seconds}s window, timing: {runs[0]['stamp']}, "
        f"APScheduler {runs[0]['apscheduler']}, {args.workers} workers)"
    )
    C.print_table(rows, headers)
    print("issue's reference on this machine class: APScheduler 3, 1,000 jobs: p50 233 ms, p99 456 ms")
    C.print_json_line(
        {
            "bench": "peer_apscheduler",
            "code": C.code_version(),
            "jobs": args.jobs,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "grace": args.grace,
            "repeat": args.repeat,
            "workers": args.workers,
            "misfire_grace": args.misfire_grace,
            "median": med,
            "dkron_over_apscheduler": ratios or None,
            "runs": [{k: v for k, v in r.items() if k != "profile"} for r in runs],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
