"""Shared pieces of the benchmarks in this folder (not a benchmark itself).

* ``make_stamp``: the command every benchmark job runs. It appends ``<DKRON_RUN_ID> <wall ns>``
  to a file, taking the wall clock as its very first action.
* ``analyze_stamps``: lateness and launch counts from that file.
* ``ProcSampler``: RSS (peak/final) and CPU of one process, sampled with psutil.
* ``AgentRunner``: a real ``dkron agent --server`` on free 127.0.0.1 ports (dkron.testing).
* table / JSON printing and small statistics helpers.

Everything runs on 127.0.0.1 only, and every process started here is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# --------------------------------------------------------------------------------------------
# The job command: a tiny static C program (cheapest), else bash's $EPOCHREALTIME, else date.
# --------------------------------------------------------------------------------------------
STAMP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* stamp FILE: append "<DKRON_RUN_ID> <CLOCK_REALTIME ns>\n" to FILE in one O_APPEND write.
   The clock is read first thing in main(), i.e. right after exec. */
int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (argc < 2) return 2;
    const char *id = getenv("DKRON_RUN_ID");
    char buf[600];
    int n = snprintf(buf, sizeof buf, "%s %lld%09ld\n", id ? id : "-", (long long)ts.tv_sec, ts.tv_nsec);
    if (n <= 0 || n >= (int)sizeof buf) return 3;
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return 1;
    if (write(fd, buf, (size_t)n) != n) return 1;
    return 0;
}
"""

STAMP_KINDS = ("auto", "c", "bash", "date")


def make_stamp(kind: str, workdir: Path, out_file: Path) -> tuple[str, str, dict[str, str]]:
    """Return (kind used, human description, shell executor_config) for the timing command.

    ``c``: a statically linked C helper, exec'd directly (no shell): ~0.4 ms CPU per run, less
    than /bin/true (dynamic loader). ``bash``: ``bash -c 'echo "$DKRON_RUN_ID $EPOCHREALTIME"'``,
    one exec and no fork, microsecond clock, ~1.1 ms CPU. ``date``: dash + a forked ``date
    +%s%N`` (the obvious form), ~1.6 ms CPU and the clock is read ~1.7 ms after the exec.
    """
    if kind in ("auto", "c"):
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc:
            src, binary = workdir / "stamp.c", workdir / "stamp"
            src.write_text(STAMP_C)
            for extra in (["-static"], []):  # static avoids ld.so work on every exec
                done = subprocess.run([gcc, "-O2", *extra, "-o", str(binary), str(src)], capture_output=True)
                if done.returncode == 0:
                    link = "static" if extra else "dynamic"
                    return (
                        "c",
                        f"{binary} (C, {link}; clock_gettime(CLOCK_REALTIME) first thing in main)",
                        {"command": f"{binary} {out_file}"},
                    )
        if kind == "c":
            raise SystemExit("--stamp c needs gcc or cc")
    if kind in ("auto", "bash") and shutil.which("bash"):
        bash = shutil.which("bash")
        return (
            "bash",
            "bash -c 'echo \"$DKRON_RUN_ID $EPOCHREALTIME\" >> FILE' (builtins only, µs wall clock)",
            {"command": f"{bash} -c 'echo \"$DKRON_RUN_ID $EPOCHREALTIME\" >> {out_file}'"},
        )
    return (
        "date",
        "/bin/sh -c 'echo $DKRON_RUN_ID $(date +%s%N) >> FILE' (forks date)",
        {"command": f"echo $DKRON_RUN_ID $(date +%s%N) >> {out_file}", "shell": "true"},
    )


def stamp_argv(config: dict[str, str]) -> list[str]:
    """The same command as an argv, for peers that run it without Dkron's executor."""
    import shlex

    if config.get("shell") == "true":
        return ["/bin/sh", "-c", config["command"]]
    return shlex.split(config["command"])


def _parse_time(text: str) -> float:
    """Seconds since the epoch from '1700000000123456789' (ns) or '1700000000.123456' (bash)."""
    if "." in text:
        return float(text)
    return int(text) / 1e9


def analyze_stamps(path: Path, window_start_ms: int, window_end_ms: int, deadline_s: float) -> dict[str, Any]:
    """Launches whose scheduled tick lies in [start, end) and that started before ``deadline_s``.

    Each line is ``<job>@<scheduled ms> <start time>``. Returns counts and lateness (ms) of the
    first start of each tick; a second start of the same tick is counted as a duplicate.
    """
    lateness: list[float] = []
    by_second: dict[int, list[float]] = {}
    seen: set[str] = set()
    duplicates = late_after_deadline = malformed = 0
    started_per_job: dict[str, int] = {}
    first_ms: dict[str, float] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        parts = line.split()
        if len(parts) != 2 or "@" not in parts[0]:
            malformed += 1
            continue
        run_id, when = parts
        job, _, tick = run_id.rpartition("@")
        try:
            scheduled_ms = int(tick)
            started = _parse_time(when)
        except ValueError:
            malformed += 1
            continue
        if not window_start_ms <= scheduled_ms < window_end_ms:
            continue
        if started > deadline_s:
            late_after_deadline += 1
            continue
        if run_id in seen:
            duplicates += 1
            continue
        seen.add(run_id)
        late = started * 1000 - scheduled_ms
        lateness.append(late)
        first_ms[run_id] = started * 1000
        by_second.setdefault(scheduled_ms, []).append(late)
        started_per_job[job] = started_per_job.get(job, 0) + 1
    lateness.sort()
    # median lateness per tick, to see whether a backlog builds up over the window
    per_tick = [statistics.median(v) for _, v in sorted(by_second.items())]
    per_tick_p99 = [percentile(sorted(v), 99) for _, v in sorted(by_second.items())]
    return {
        "achieved": len(lateness),
        "duplicates": duplicates,
        "after_deadline": late_after_deadline,
        "malformed": malformed,
        "lateness_ms": lateness,
        "per_tick_median_ms": per_tick,
        "per_tick_p99_ms": per_tick_p99,
        "per_job": started_per_job,
        "start_ms": first_ms,
    }


# --------------------------------------------------------------------------------------------
# statistics and printing
# --------------------------------------------------------------------------------------------
def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def rnd(value: Any, digits: int = 1) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    return value


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over repeated runs (other fields from the first run)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            out[key] = rnd(float(statistics.median(numbers)), 2)
        else:
            out[key] = values[0]
    return out


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def print_json_line(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, separators=(",", ":"), sort_keys=False), flush=True)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# --------------------------------------------------------------------------------------------
# process sampling
# --------------------------------------------------------------------------------------------
class ProcSampler:
    """Samples one process's RSS every ``interval`` s in a thread; CPU times on demand."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self.last_rss = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)

    def start(self) -> ProcSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> int:
        import psutil

        with contextlib.suppress(psutil.Error):
            rss = self.proc.memory_info().rss
            self.last_rss = rss
            self.peak_rss = max(self.peak_rss, rss)
            self.samples.append((time.time(), rss))
        return self.last_rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def reset_peak(self) -> None:
        self.peak_rss = self.sample()

    def cpu(self) -> dict[str, float]:
        """Own and reaped-children CPU seconds of the process, system-wide busy seconds, wall."""
        import psutil

        t = self.proc.cpu_times()
        sys_t = psutil.cpu_times()
        busy = sum(sys_t) - sys_t.idle - getattr(sys_t, "iowait", 0.0)
        return {
            "own": t.user + t.system,
            "children": t.children_user + t.children_system,
            "busy": busy,
            "wall": time.monotonic(),
            "threads": self.proc.num_threads(),
        }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    wall = max(b["wall"] - a["wall"], 1e-9)
    return {
        "server_cpu_pct": 100 * (b["own"] - a["own"]) / wall,
        "children_cpu_pct": 100 * (b["children"] - a["children"]) / wall,
        "machine_busy_pct": 100 * (b["busy"] - a["busy"]) / wall,  # of ONE core; 200 = both cores
    }


MB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# the agent under test
# --------------------------------------------------------------------------------------------
def agent_class() -> Any:
    try:
        from dkron.testing import AgentProcess
    except ImportError as exc:  # pragma: no cover - run with the project's venv
        raise SystemExit(f"run this with the project's venv (.venv/bin/python): {exc}") from None
    return AgentProcess


class AgentRunner:
    """Starts ``dkron agent --server`` (via dkron.testing.AgentProcess) and always stops it."""

    def __init__(self, data_dir: Path, extra_args: Sequence[str] = (), wait: float = 120.0) -> None:
        self.agent = agent_class()(Path(data_dir), extra_args=tuple(extra_args))
        self.wait = wait
        self.started_at = 0.0
        self.healthy_after = 0.0
        self.stop_seconds: float | None = None

    def __enter__(self) -> Any:
        t0 = time.monotonic()
        try:
            self.agent.start(wait=self.wait)
        except BaseException:
            self.stop()
            raise
        self.healthy_after = time.monotonic() - t0
        return self.agent

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        proc = self.agent.proc
        if proc is None or proc.poll() is not None:
            return
        t0 = time.monotonic()
        try:
            self.agent.stop(timeout=40)
            self.stop_seconds = time.monotonic() - t0
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise


def wait_leader(session: Any, url: str, timeout: float = 60.0) -> None:
    """Wait until the node reports itself leader (writes are accepted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if session.get(url + "/v1/isleader", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError("the agent did not become leader")


def workdir(prefix: str, keep: bool) -> tuple[Path, Any]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_TMP") or None))

    def cleanup() -> None:
        # A job process still in flight when an agent was killed may recreate its stamp file
        # after the first pass: retry briefly so that no work dir is left behind.
        for _ in range(5):
            if keep or not path.exists():
                return
            shutil.rmtree(path, ignore_errors=True)
            time.sleep(0.2)

    return path, cleanup


def machine_line() -> str:
    import platform

    try:
        import psutil

        cores = psutil.cpu_count()
        mem = psutil.virtual_memory().total / (1024**3)
        load = os.getloadavg()[0]
        return f"{platform.node()} {cores} cores {mem:.0f} GiB, load1 {load:.2f}, python {sys.version.split()[0]}"
    except Exception:  # pragma: no cover
        return platform.platform()


def sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


# --------------------------------------------------------------------------------------------
# optional profile with py-spy (give its path with --py-spy; it is not a project dependency)
# --------------------------------------------------------------------------------------------
class PySpy:
    """``py-spy record --format raw`` of one pid for ``duration`` s, summarised afterwards."""

    def __init__(self, exe: str, pid: int, duration: float, out: Path, gil: bool = False, rate: int = 100) -> None:
        self.out = out
        args = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(out),
            "--duration",
            str(max(1, int(duration))),
            "--rate",
            str(rate),
            "--nonblocking",
        ]
        if gil:
            args.append("--gil")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, timeout: float = 60) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "func (path/file.py:123)"; drop the line number
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0] if ":" in where else where
    return f"{name} ({file})"


def _thread_label(frames: list[str]) -> str:
    for frame in frames:
        if "threading.py" in frame or frame.startswith("<module>"):
            continue
        if "concurrent/futures/thread.py" in frame and frame.startswith("_worker"):
            continue
        return _frame_name(frame)
    return _frame_name(frames[-1]) if frames else "?"


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and shares per thread entry point."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {"total_samples": 0}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = _frame_name(frames[-1])
        self_counts[leaf] = self_counts.get(leaf, 0) + count
        for name in {_frame_name(f) for f in frames}:
            incl_counts[name] = incl_counts.get(name, 0) + count
        label = _thread_label(frames)
        threads[label] = threads.get(label, 0) + count

    def share(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "total_samples": total,
        "self": share(self_counts),
        "inclusive": share(incl_counts),
        "threads": share(threads),
    }


def print_profile(summary: dict[str, Any], title: str) -> None:
    print(f"\n{title}: {summary.get('total_samples', 0)} samples (share of all non-idle samples)")
    for key, heading in (
        ("threads", "by thread entry point"),
        ("self", "self (leaf) time"),
        ("inclusive", "inclusive time"),
    ):
        if summary.get(key):
            print(f"  {heading}:")
            for name, pct in summary[key]:
                print(f"    {pct:5.1f}%  {name}")


def code_version() -> str:
    """HEAD of the repository and whether core/plugins differ from it (read-only git commands)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "diff", "--name-only", "HEAD", "--", "core", "plugins"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+{len(changed)} uncommitted files in core/plugins" if changed else head or "unknown"


def repeat_runs(
    count: int,
    one_run: Callable[[int], dict[str, Any]],
    *,
    extra: Callable[[dict[str, Any]], str],
    skip: tuple[str, ...],
    profile_of: str,
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Run ``one_run(i)`` ``count`` times, printing each run's launch figures (plus ``extra``) and
    its py-spy profile if any; return the runs, their per-key medians (without ``skip`` keys) and
    the label of those ("median of N runs" or "value")."""
    runs = []
    for i in range(1, count + 1):
        r = one_run(i)
        runs.append(r)
        print(
            f"[run {i}] achieved {r['achieved']}/{r['expected']} ({r['achieved_pct']}%), lateness p50 "
            f"{r['lateness_p50_ms']} p99 {r['lateness_p99_ms']} max {r['lateness_max_ms']} ms, {extra(r)}",
            flush=True,
        )
        if "profile" in r:
            print_profile(r["profile"], f"[run {i}] py-spy profile of {profile_of} over the window")
    med = median_of([{k: v for k, v in r.items() if k not in skip} for r in runs])
    return runs, med, (f"median of {len(runs)} runs" if len(runs) > 1 else "value")


def launch_figures(stamps: dict[str, Any], expected: int) -> dict[str, Any]:
    """The launch figures every launch benchmark reports, from :func:`analyze_stamps`'s result."""
    lat = stamps["lateness_ms"]
    ticks = stamps["per_tick_median_ms"]
    return {
        "expected": expected,
        "achieved": stamps["achieved"],
        "achieved_pct": round(100 * stamps["achieved"] / expected, 2),
        "duplicates": stamps["duplicates"],
        "started_after_deadline": stamps["after_deadline"],
        "lateness_p50_ms": rnd(percentile(lat, 50)),
        "lateness_p90_ms": rnd(percentile(lat, 90)),
        "lateness_p99_ms": rnd(percentile(lat, 99)),
        "lateness_max_ms": rnd(lat[-1] if lat else None),
        "lateness_min_ms": rnd(lat[0] if lat else None),
        "tick_median_first5_ms": rnd(statistics.median(ticks[:5]) if ticks else None),
        "tick_median_last5_ms": rnd(statistics.median(ticks[-5:]) if ticks else None),
    }
