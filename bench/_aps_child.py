"""The APScheduler 3 side of ``peer_apscheduler.py``; runs under the interpreter given by --python.

Not a benchmark by itself and never imported by the project: it needs ``apscheduler<4``, which
is installed in a throwaway venv, never in the project's.

N jobs, each ``CronTrigger(second="*")`` in UTC, in one ``BackgroundScheduler`` with the
default in-memory job store (nothing persisted) and a ``ThreadPoolExecutor``. Each run starts
the same command as the Dkron benchmark with ``DKRON_RUN_ID=<job>@<scheduled ms>`` and
``DKRON_SCHEDULED_AT`` in its environment, and waits for it, like Dkron's shell executor (new
session, stdin /dev/null, stdout+stderr read through a pipe).

APScheduler 3 does not pass the scheduled time to the job function, so ``run_job`` (the
executor's entry point, which receives it) is wrapped to hand it over in a thread-local; with
``coalesce=True`` (APScheduler's default) each call carries exactly one run time.

Protocol: prints ``READY <jobs>`` once the scheduler runs; on SIGTERM/SIGINT shuts down and
prints one JSON line with event counts (runs, errors, missed, max-instances skips).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC

import apscheduler
import apscheduler.executors.pool as aps_pool
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

_local = threading.local()
_original_run_job = aps_pool.run_job


def _run_job_with_time(job, jobstore_alias, run_times, logger_name):  # type: ignore[no-untyped-def]
    _local.run_time = run_times[-1]
    return _original_run_job(job, jobstore_alias, run_times, logger_name)


aps_pool.run_job = _run_job_with_time  # BasePoolExecutor._do_submit_job looks it up here

ARGV: list[str] = []
BASE_ENV = dict(os.environ)


def fire(name: str) -> int:
    run_time = _local.run_time
    scheduled_ms = round(run_time.timestamp() * 1000)
    env = dict(BASE_ENV)
    env["DKRON_RUN_ID"] = f"{name}@{scheduled_ms}"
    env["DKRON_SCHEDULED_AT"] = run_time.astimezone(UTC).isoformat()
    done = subprocess.run(
        ARGV,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        check=False,
    )
    return done.returncode


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--argv-json", required=True, help="the command, as a JSON list")
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--misfire-grace", type=int, default=1, help="0 = no limit (None)")
    p.add_argument("--max-instances", type=int, default=1)
    args = p.parse_args()
    ARGV[:] = json.loads(args.argv_json)

    counts = {"executed": 0, "error": 0, "missed": 0, "max_instances": 0}
    lock = threading.Lock()
    names = {
        EVENT_JOB_EXECUTED: "executed",
        EVENT_JOB_ERROR: "error",
        EVENT_JOB_MISSED: "missed",
        EVENT_JOB_MAX_INSTANCES: "max_instances",
    }

    def listener(event) -> None:  # type: ignore[no-untyped-def]
        with lock:
            counts[names[event.code]] += 1

    scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(args.workers)}, timezone=UTC)
    scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    for i in range(args.jobs):
        name = f"bench-{i:05d}"
        scheduler.add_job(
            fire,
            CronTrigger(second="*", timezone=UTC),
            args=[name],
            id=name,
            misfire_grace_time=args.misfire_grace or None,
            coalesce=True,
            max_instances=args.max_instances,
        )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scheduler.start()
    print(f"READY {args.jobs} apscheduler {apscheduler.__version__}", flush=True)
    parent = os.getppid()
    for _ in range(3600):  # bounded; also stops if the harness vanished without a signal
        if stop.wait(1.0) or os.getppid() != parent:
            break
    scheduler.shutdown(wait=False)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
