"""Prometheus metrics for ``GET /metrics`` (one ``CollectorRegistry`` per agent, never the global one).

Run metrics are counted from execution records as the state machine applies them, **on the
leader only**: every record is applied on every server, so counting everywhere would count each
run once per server. The apply listener only queues the records; a ``metrics-counter`` thread (and
each scrape, so it reads current counts) does the counting. Creating a new job's histogram series
costs ~40 µs, and a 5,000-job herd did that on the Raft thread inside one apply, delaying the
leader's heartbeats. When leadership moves, counting continues on the new leader; sum over the
servers (``sum by (job) (rate(dkron_job_runs_succeeded_total[5m]))``) for cluster totals.
Lateness (scheduled time to start) uses the ``started_at`` stamped by the node that ran the job,
so it is measured where the run starts.

Labels: only ``job`` (plus ``plugin`` for plugin errors, ``state`` for the Raft state and
``channel``/``outcome`` for notifications, all small fixed sets). A job's series are removed when
the job is deleted, so cardinality is bounded by the number of jobs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dkron.agent import Agent

__all__ = ["CONTENT_TYPE", "Metrics"]

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DURATION_BUCKETS = (0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400)
RAFT_STATES = ("follower", "candidate", "leader")


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _Seen:
    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def first(self, key: tuple[str, ...]) -> bool:
        """True the first time ``key`` is seen (records can be reported twice)."""
        if key in self._items:
            return False
        self._items[key] = None
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return True


class _StateCollector(Collector):
    """Gauges read at scrape time: leadership, Raft state, running executions, plugin errors."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        leader = GaugeMetricFamily("dkron_leader", "1 if this server is the Raft leader (it schedules), else 0")
        leader.add_metric([], 1.0 if agent.is_leader else 0.0)
        yield leader
        raft = agent.raft
        status: dict[str, Any] = {}
        if raft is not None:
            try:
                status = raft.status()
            except Exception:  # status is best effort while the node starts or stops
                status = {}
        state = GaugeMetricFamily("dkron_raft_state", "1 for this server's current Raft state", labels=["state"])
        current = RAFT_STATES[status["state"]] if isinstance(status.get("state"), int) and status["state"] < 3 else ""
        for name in RAFT_STATES:
            state.add_metric([name], 1.0 if name == current else 0.0)
        yield state
        for key, name, text in (
            ("raft_term", "dkron_raft_term", "current Raft term"),
            ("commit_idx", "dkron_raft_commit_index", "highest Raft log index known committed"),
            ("last_applied", "dkron_raft_applied_index", "highest Raft log index applied to the state"),
        ):
            if isinstance(status.get(key), int):
                gauge = GaugeMetricFamily(name, text)
                gauge.add_metric([], float(status[key]))
                yield gauge
        peers = GaugeMetricFamily("dkron_raft_peers", "other servers in this server's Raft configuration")
        peers.add_metric([], float(len(getattr(raft, "otherNodes", ()) or ())) if raft is not None else 0.0)
        yield peers
        running = GaugeMetricFamily("dkron_executions_running", "executions recorded as running", labels=["job"])
        try:
            counts: dict[str, int] = {}
            for ex in agent.reader.running_executions():
                counts[ex["job_name"]] = counts.get(ex["job_name"], 0) + 1
            for job, count in sorted(counts.items()):
                running.add_metric([job], float(count))
        except Exception:
            log.debug("could not read running executions for /metrics", exc_info=True)
        yield running
        paused = GaugeMetricFamily("dkron_scheduling_paused", "1 if cluster-wide scheduling is paused")
        paused.add_metric([], 1.0 if agent.reader.meta("scheduling_paused", False) else 0.0)
        yield paused
        errors = GaugeMetricFamily(
            "dkron_plugin_errors", "1 for each installed plugin that failed to load (see the log)", labels=["plugin"]
        )
        for name, info in sorted(agent.plugins.infos.items()):
            if info.error:
                errors.add_metric([name], 1.0)
        yield errors
        placement = getattr(agent, "placement", None)
        stats = getattr(placement, "stats", None)
        if stats is not None:  # a server: what it dispatched to other nodes while it led
            calls = CounterMetricFamily("dkron_dispatch_calls", "StartRuns calls made to start runs on other nodes")
            calls.add_metric([], float(stats["calls"]))
            yield calls
            runs = CounterMetricFamily(
                "dkron_dispatch_runs", "runs started on other nodes (runs / calls: how many one call carries)"
            )
            runs.add_metric([], float(stats["runs"]))
            yield runs
            streams = GaugeMetricFamily("dkron_dispatch_streams", "open WatchRuns streams (one per node in use)")
            streams.add_metric([], float(placement.open_streams()))
            yield streams
        notifier = getattr(agent, "notifier", None)
        sent = GaugeMetricFamily(
            "dkron_notifications", "notifications by channel and outcome since start", labels=["channel", "outcome"]
        )
        for (channel, outcome), count in sorted((notifier.counts if notifier else {}).items()):
            sent.add_metric([channel, outcome], float(count))
        yield sent


class Metrics:
    def __init__(self, agent: Agent, is_leader: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.is_leader = is_leader
        r = self.registry
        self.started = Counter("dkron_job_runs_started", "node executions started", ["job"], registry=r)
        self.succeeded = Counter("dkron_job_runs_succeeded", "node executions that succeeded", ["job"], registry=r)
        self.failed = Counter(
            "dkron_job_runs_failed", "node executions that failed (including lost ones)", ["job"], registry=r
        )
        self.skipped = Counter(
            "dkron_job_runs_skipped", "ticks skipped (concurrency forbid, paused scheduling)", ["job"], registry=r
        )
        self.missed = Counter(
            "dkron_job_runs_missed", "ticks missed while no leader was scheduling", ["job"], registry=r
        )
        self.lateness = Histogram(
            "dkron_job_lateness_seconds",
            "scheduled time to start, measured by the node that ran the job",
            ["job"],
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "dkron_job_run_duration_seconds",
            "run time of finished executions",
            ["job"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.registry.register(_StateCollector(agent))
        self._seen = _Seen()
        # (command, payload) in apply order; popped only under _lock, so a job's deletion is
        # never counted before the records applied ahead of it.
        self._pending: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._per_job = (
            self.started,
            self.succeeded,
            self.failed,
            self.skipped,
            self.missed,
            self.lateness,
            self.duration,
        )

    def start(self) -> None:
        """Count queued records in the background (without it they are counted at each scrape)."""
        self._thread = threading.Thread(target=self._count_forever, name="metrics-counter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def render(self) -> bytes:
        self.drain()
        return generate_latest(self.registry)

    # -- the apply listener (Raft tick thread): queue only ------------------------------------
    def on_applied(self, command: str, payload: dict[str, Any], result: Any) -> None:
        try:
            if command == "delete_job":
                self._pending.append((command, payload["name"]))
            elif command == "record" and self.is_leader():  # leadership at apply time decides
                self._pending.append((command, payload.get("executions", ())))
            else:
                return
        except Exception:  # metrics must never disturb applying
            log.debug("metrics listener error", exc_info=True)
            return
        self._wake.set()

    def drain(self) -> None:
        """Count every queued record now."""
        with self._lock:
            while self._pending:
                command, item = self._pending.popleft()
                try:
                    if command == "delete_job":
                        self._forget(item)
                    else:
                        for ex in item:
                            self._count(ex)
                except Exception:  # one malformed record must not stop the counting
                    log.debug("metrics counting error", exc_info=True)

    def _count_forever(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            self.drain()

    def _count(self, ex: dict[str, Any]) -> None:
        job, status, ex_id = ex["job_name"], ex.get("status", ""), str(ex.get("id", ""))
        if status in ("running", "success", "failed") and ex.get("started_at") and self._seen.first((job, ex_id, "s")):
            self.started.labels(job).inc()
            scheduled, started = _seconds(ex.get("scheduled_at")), _seconds(ex.get("started_at"))
            if scheduled is not None and started is not None and ex.get("kind", "scheduled") != "manual":
                self.lateness.labels(job).observe(max(0.0, started - scheduled))
        if status == "running" or not self._seen.first((job, ex_id, "f")):
            return
        if status == "success":
            self.succeeded.labels(job).inc()
        elif status in ("failed", "lost"):
            self.failed.labels(job).inc()
        elif status == "skipped":
            self.skipped.labels(job).inc()
        elif status == "missed":
            self.missed.labels(job).inc(int(ex.get("missed") or 1))
        if status in ("success", "failed"):
            started, finished = _seconds(ex.get("started_at")), _seconds(ex.get("finished_at"))
            if started is not None and finished is not None:
                self.duration.labels(job).observe(max(0.0, finished - started))

    def _forget(self, job: str) -> None:
        for metric in self._per_job:
            with contextlib.suppress(KeyError):
                metric.remove(job)
