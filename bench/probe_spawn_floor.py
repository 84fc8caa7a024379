#!/usr/bin/env python3
"""How late can N process launches in the same second be at best, on this machine?

Puts ``bench_launch``'s figures in context. It starts N copies of the same stamp command at
one whole second, in several ways, with no scheduler, Raft or HTTP, and reports the lateness
(process start - that second) as bench_launch measures it:

* ``c-spawn xK``: K C processes (default 1 and 2), each posix_spawn()s its share of the N
  stamps in a tight loop. This is the kernel and machine floor for spawning from K processes.
* ``c-prespawned``: N C launchers are started before the second. Each sleeps until the second,
  then execve()s the stamp, so the fork happens early and only the exec happens at the second.
* ``py-posix_spawn``: one Python thread, os.posix_spawn() in a loop.
* ``dkron-runner xK``: the server's own ``dkron.runner.Runner`` with the real shell executor
  (``max_concurrent`` 64, as the agent's default) in K processes (``--runner-processes``, like K
  agents), each submitting its N/K ``RunSpec`` at the second in one batch. This is
  bench_launch (K=1) or bench_cluster's agents (K=2) without the scheduler, Raft, recorder,
  gRPC and HTTP. With ``--ahead 0.5`` the runs are submitted half a second early with their
  start time, as the leader sends them: the runner holds them and the shell executor spawns
  their processes meanwhile (``prepare``), so only the exec happens at the second.

Needs gcc/cc for the C variants (they are skipped without it). Bounded: ``--ticks`` seconds
per variant. Every child is waited for.

Example:  .venv/bin/python bench/probe_spawn_floor.py --jobs 1000 --ticks 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SPAWN_C = r"""
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
/* spawnloop STAMP FILE T_MS LO HI STEP: at T_MS, posix_spawn STAMP FILE for ids LO..HI by STEP. */
int main(int argc, char **argv) {
    if (argc < 7) return 2;
    long long t = atoll(argv[3]);
    int lo = atoi(argv[4]), hi = atoi(argv[5]), step = atoi(argv[6]);
    struct timespec ts = {t / 1000, (t % 1000) * 1000000};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) != 0) {}
    char *args[] = {argv[1], argv[2], NULL};
    char idbuf[80];
    char *envp[] = {idbuf, NULL};
    for (int i = lo; i < hi; i += step) {
        snprintf(idbuf, sizeof idbuf, "DKRON_RUN_ID=j%d@%lld", i, t);
        pid_t pid;
        posix_spawn(&pid, argv[1], NULL, NULL, args, envp);
    }
    while (wait(NULL) > 0) {}
    return 0;
}
"""

WAITEXEC_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* waitexec T_MS ID STAMP FILE: sleep until T_MS, then exec STAMP FILE with DKRON_RUN_ID=ID@T_MS. */
int main(int argc, char **argv) {
    if (argc < 5) return 2;
    long long t = atoll(argv[1]);
    struct timespec ts = {t / 1000, (t % 1000) * 1000000};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) != 0) {}
    char idbuf[80];
    snprintf(idbuf, sizeof idbuf, "DKRON_RUN_ID=%s@%lld", argv[2], t);
    char *envp[] = {idbuf, NULL};
    char *args[] = {argv[3], argv[4], NULL};
    execve(argv[3], args, envp);
    return 127;
}
"""


def compile_c(work: Path, name: str, source: str) -> Path | None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        return None
    src, binary = work / f"{name}.c", work / name
    src.write_text(source)
    for extra in (["-static"], []):
        if subprocess.run([gcc, "-O2", *extra, "-o", str(binary), str(src)], capture_output=True).returncode == 0:
            return binary
    return None


def next_tick_ms(lead: float = 1.0) -> int:
    return math.ceil(time.time() + lead) * 1000


def collect(stamp_file: Path, ticks: list[int]) -> list[float]:
    lat: list[float] = []
    for t in ticks:
        lat += C.analyze_stamps(stamp_file, t, t + 1, time.time() + 60)["lateness_ms"]
    return sorted(lat)


def run_c_spawn(spawnloop: Path, stamp: str, out: Path, n: int, ticks: int, k: int) -> list[float]:
    used = []
    for _ in range(ticks):
        t = next_tick_ms()
        procs = [subprocess.Popen([str(spawnloop), stamp, str(out), str(t), str(i), str(n), str(k)]) for i in range(k)]
        for p in procs:
            p.wait(60)
        used.append(t)
    return collect(out, used)


def run_c_prespawned(waitexec: Path, stamp: str, out: Path, n: int, ticks: int) -> list[float]:
    used = []
    for _ in range(ticks):
        t = next_tick_ms(lead=2.0)  # leave time to start N waiting launchers
        pids = [os.posix_spawn(str(waitexec), [str(waitexec), str(t), f"j{i}", stamp, str(out)], {}) for i in range(n)]
        for pid in pids:
            os.waitpid(pid, 0)
        used.append(t)
    return collect(out, used)


def run_py_posix_spawn(stamp: str, out: Path, n: int, ticks: int) -> list[float]:
    used = []
    base = dict(os.environ)
    for _ in range(ticks):
        t = next_tick_ms()
        envs = [{**base, "DKRON_RUN_ID": f"j{i}@{t}"} for i in range(n)]
        C.sleep_until(t / 1000)
        while time.time() * 1000 < t:
            pass
        pids = [os.posix_spawn(stamp, [stamp, str(out)], env) for env in envs]
        for pid in pids:
            os.waitpid(pid, 0)
        used.append(t)
    return collect(out, used)


def seconds_ahead(ticks: int, lead: float) -> list[int]:
    """``ticks`` consecutive whole seconds (ms), the first at least ``lead`` s from now."""
    first = next_tick_ms(lead)
    return [first + 1000 * i for i in range(ticks)]


def run_dkron_runner(
    config: dict[str, str],
    out: Path,
    work: Path,
    n: int,
    at: list[int],
    workers: int,
    first: int = 0,
    ahead: float = 0.0,
) -> list[float]:
    """Jobs ``first`` .. ``first + n - 1`` launched at each second of ``at`` (ms).

    ``ahead`` > 0: submitted that many seconds early with their start time, as the leader
    dispatches runs due at a whole second (the runner holds them, and may prepare them)."""
    from dkron.ledger import RunLedger
    from dkron.plugins import load_plugins
    from dkron.runner import Runner, RunSpec

    plugins = load_plugins()
    runner = Runner(
        "node1",
        plugins.executors,
        plugins.processors,
        lambda event: None,
        max_concurrent=workers,
        ledger=RunLedger(str(work / f"started-runs-{first}.log")),
    )
    jobs = [{"name": f"j{i}", "executor": "shell", "executor_config": config} for i in range(first, first + n)]
    used = []
    try:
        for t in at:
            C.sleep_until(t / 1000 - ahead)
            while time.time() * 1000 < t - ahead * 1000:
                pass
            runner.submit_many(
                [
                    (
                        RunSpec(
                            job=job,
                            run_id=f"{job['name']}@{t}",
                            execution_id=f"{t}-{job['name']}",
                            node_name="node1",
                            scheduled_ms=t,
                            start_at=t / 1000 if ahead else 0.0,
                        ),
                        None,
                    )
                    for job in jobs
                ]
            )
            used.append(t)
        time.sleep(1.5)
    finally:
        runner.shutdown(10)
        runner.ledger.close()
    return collect(out, used)


def run_dkron_runners(
    config: dict[str, str], out: Path, work: Path, n: int, ticks: int, workers: int, k: int, ahead: float = 0.0
) -> list[float]:
    """The runner in ``k`` processes (like ``k`` agents), each starting its share at the same seconds."""
    at = seconds_ahead(ticks, lead=3.0)  # the children need a moment to import and load plugins
    share = n // k
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child-runner",
                json.dumps(
                    {
                        "config": config,
                        "out": str(out),
                        "work": str(work),
                        "n": share,
                        "at": at,
                        "first": i * share,
                        "workers": workers,
                        "ahead": ahead,
                    }
                ),
            ]
        )
        for i in range(k)
    ]
    for child in children:
        child.wait(120)
    return collect(out, at)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1000, help="launches in the same second (default 1000)")
    p.add_argument("--ticks", type=int, default=3, help="seconds measured per variant (default 3)")
    p.add_argument("--spawners", default="1,2", help="C spawner process counts to try (default 1,2)")
    p.add_argument("--workers", type=int, default=64, help="Runner max_concurrent (agent default 64)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument(
        "--ahead",
        type=float,
        default=0.0,
        help="dkron-runner: submit runs this many seconds before their second, as the leader does (0.5)",
    )
    p.add_argument(
        "--runner-processes", default="1,2", help="process counts for the dkron-runner variant (default 1,2)"
    )
    p.add_argument("--child-runner", help=argparse.SUPPRESS)  # internal: one process of dkron-runner xK
    args = p.parse_args(argv)
    if args.child_runner:
        spec = json.loads(args.child_runner)
        run_dkron_runner(
            spec["config"],
            Path(spec["out"]),
            Path(spec["work"]),
            spec["n"],
            spec["at"],
            spec["workers"],
            spec["first"],
            spec["ahead"],
        )
        return 0
    if not 1 <= args.jobs <= 20_000 or not 1 <= args.ticks <= 30:
        p.error("bounded: 1 <= --jobs <= 20000, 1 <= --ticks <= 30")
    work, cleanup = C.workdir("dkron-bench-floor-", args.keep)
    print(
        f"probe_spawn_floor: {args.jobs} launches at one second, {args.ticks} ticks each; {C.machine_line()}",
        flush=True,
    )
    results: dict[str, Any] = {}
    try:
        kind, _, config = C.make_stamp("auto", work, work / "unused.txt")
        stamp = C.stamp_argv(config)[0] if kind == "c" else None
        variants: list[tuple[str, Any]] = []
        spawnloop = compile_c(work, "spawnloop", SPAWN_C)
        waitexec = compile_c(work, "waitexec", WAITEXEC_C)
        if stamp and spawnloop:
            for k in (int(x) for x in args.spawners.split(",") if x.strip()):
                variants.append(
                    (f"c-spawn x{k}", lambda out, k=k: run_c_spawn(spawnloop, stamp, out, args.jobs, args.ticks, k))
                )
        if stamp and waitexec:
            variants.append(("c-prespawned", lambda out: run_c_prespawned(waitexec, stamp, out, args.jobs, args.ticks)))
        if stamp:
            variants.append(("py-posix_spawn", lambda out: run_py_posix_spawn(stamp, out, args.jobs, args.ticks)))

        def dkron_runner(out: Path, k: int) -> list[float]:
            _, _, cfg = C.make_stamp("auto", work, out)
            if k == 1:
                return run_dkron_runner(
                    cfg, out, work, args.jobs, seconds_ahead(args.ticks, 1.0), args.workers, ahead=args.ahead
                )
            return run_dkron_runners(cfg, out, work, args.jobs, args.ticks, args.workers, k, args.ahead)

        for k in (int(x) for x in args.runner_processes.split(",") if x.strip()):
            variants.append((f"dkron-runner x{k}", lambda out, k=k: dkron_runner(out, k)))
        for name, fn in variants:
            out = work / f"{name.replace(' ', '_')}.txt"
            lat = fn(out)
            expected = args.jobs * args.ticks
            results[name] = {
                "started": len(lat),
                "expected": expected,
                "p50_ms": C.rnd(C.percentile(lat, 50)),
                "p99_ms": C.rnd(C.percentile(lat, 99)),
                "max_ms": C.rnd(lat[-1] if lat else None),
            }
            print(f"  {name}: {results[name]}", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        cleanup()
    print(f"\nprobe_spawn_floor results ({args.jobs} launches in the same second; timing: {kind})")
    C.print_table(
        [(n, f"{r['started']}/{r['expected']}", r["p50_ms"], r["p99_ms"], r["max_ms"]) for n, r in results.items()],
        ["variant", "started", "p50 (ms)", "p99 (ms)", "max (ms)"],
    )
    C.print_json_line(
        {
            "bench": "probe_spawn_floor",
            "code": C.code_version(),
            "jobs": args.jobs,
            "ticks": args.ticks,
            "results": results,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
