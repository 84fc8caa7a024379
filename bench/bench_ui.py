#!/usr/bin/env python3
"""Web UI page times at 10,000 jobs with 100 executions each (1,000,000 executions).

1. Fills a fresh data dir offline with ``bench_store.fill`` (the same ``StateMachine.apply`` path
   Raft uses; see bench_store.py), unless ``--data-dir`` reuses one.
2. Starts ``dkron agent --server`` on it and loads each UI page ``--loads`` times (after warm-up
   loads), reporting the median and p95 of the server time (the page's ``Server-Timing`` header:
   queries + template) and of the client's wall time on loopback.

Pages: the jobs page (first page, a deep page, sorted by next run, a search over names and
metadata, a tag filter), the job page of jobs spread over the list (fields, next 10 runs,
executions page 1 of 100 kept), an execution page, and the dashboard.

Example:
    .venv/bin/python bench/bench_ui.py                       # 10,000 jobs, 1,000,000 executions
    .venv/bin/python bench/bench_ui.py --jobs 1000 --executions 100000 --loads 10
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import bench_store

TARGET_MS = 100.0  # a page the operator waits for: well under the ~100 ms "instant" threshold


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--executions", type=int, default=1_000_000, help="spread evenly over the jobs (default 100 each)")
    p.add_argument("--loads", type=int, default=15, help="timed loads per page (default 15)")
    p.add_argument("--data-dir", default=None, help="reuse a data dir filled by an earlier run with --keep")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.executions < 0 or args.loads < 1:
        p.error("--jobs and --loads must be >= 1, --executions >= 0")
    return args


def server_ms(res: Any) -> float:
    match = re.search(r"app;dur=([0-9.]+)", res.headers.get("Server-Timing", ""))
    if match is None:
        raise RuntimeError(f"no Server-Timing header on {res.url}")
    return float(match.group(1))


def time_page(session: Any, url: str, paths: list[str], loads: int, warm: int = 2) -> dict[str, Any]:
    server: list[float] = []
    wall: list[float] = []
    size = 0
    for k in range(warm + loads):
        path = paths[k % len(paths)]
        t0 = time.perf_counter()
        res = session.get(url + path, timeout=120)
        dt = (time.perf_counter() - t0) * 1000
        if res.status_code != 200:
            raise RuntimeError(f"GET {path}: HTTP {res.status_code} {res.text[:300]}")
        if k >= warm:
            server.append(server_ms(res))
            wall.append(dt)
            size = len(res.content)
    server.sort()
    wall.sort()
    return {
        "server_median_ms": round(statistics.median(server), 1),
        "server_p95_ms": round(C.percentile(server, 95), 1),
        "server_max_ms": round(server[-1], 1),
        "wall_median_ms": round(statistics.median(wall), 1),
        "bytes": size,
    }


def main(argv: list[str] | None = None) -> int:
    import requests

    args = parse_args(argv)
    per_job = -(-args.executions // args.jobs) if args.executions else 0
    keep = max(100, per_job)
    print(f"bench_ui: {args.jobs} jobs, {args.executions} executions; {C.machine_line()}", flush=True)
    if args.data_dir:
        data_dir = Path(args.data_dir).resolve()
        cleanup = lambda: None  # noqa: E731 - the caller's data dir is never removed
    else:
        work, cleanup = C.workdir("dkron-bench-ui-", args.keep)
        data_dir = work / "data"
        print(f"filling {data_dir} offline ...", flush=True)
        print(f"  filled: {bench_store.fill(data_dir, args.jobs, args.executions, 5_000, keep)}", flush=True)
    runner = C.AgentRunner(data_dir, ["--retention-count", str(keep)], wait=600)
    log_offset = bench_store.log_size(runner.agent)  # a reused data dir's log has earlier runs
    results: dict[str, Any] = {}
    try:
        with runner as agent:
            session = requests.Session()
            C.wait_leader(session, agent.url, timeout=120)
            # The new leader loads every job into its scheduler first: measure after that.
            bench_store.wait_scheduler_active(agent, log_offset)
            time.sleep(2)
            n = args.loads
            step = max(1, args.jobs // n)
            names = [bench_store.job_name(min(args.jobs - 1, k * step)) for k in range(n)]
            first = session.get(f"{agent.url}/v1/jobs/{names[0]}/executions?_start=0&_end=1", timeout=60).json()
            deep = max(1, min(100, args.jobs // 50))
            pages = {
                "jobs page 1 (50 rows)": ["/ui/jobs"],
                f"jobs page {deep}": [f"/ui/jobs?page={deep}"],
                "jobs sorted by next run, desc": ["/ui/jobs?sort=next&order=desc"],
                "jobs search (name/displayname/metadata)": ["/ui/jobs?q=0042"],
                "jobs filter tag + status": ["/ui/jobs?tag=role=worker&status=failed"],
                "job page (fields, next 10, executions 1-20 of 100)": [f"/ui/jobs/{name}" for name in names],
                "execution page": [f"/ui/jobs/{names[0]}/executions/{first[0]['id']}"] if first else ["/ui/"],
                "dashboard": ["/ui/"],
            }
            for label, paths in pages.items():
                # No warm-up for the dashboard: its max is the load that counted the last hour's runs.
                results[label] = time_page(session, agent.url, paths, n, warm=0 if label == "dashboard" else 2)
                print(f"  {label}: {results[label]}", flush=True)
    finally:
        runner.stop()
        cleanup()
    rows = [
        (
            label,
            r["server_median_ms"],
            r["server_p95_ms"],
            r["server_max_ms"],
            r["wall_median_ms"],
            r["bytes"],
            C.verdict(r["server_median_ms"] <= TARGET_MS),
        )
        for label, r in results.items()
    ]
    print()
    headers = ["page", "server median ms", "p95", "max", "wall median ms", "bytes", f"median <= {TARGET_MS:.0f} ms"]
    C.print_table(rows, headers)
    C.print_json_line({"bench": "ui", "jobs": args.jobs, "executions": args.executions, "pages": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
