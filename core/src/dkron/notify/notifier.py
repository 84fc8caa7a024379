"""Post-run (e-mail, webhook) and pre-run (webhook) notifications, sent by the leader.

Flow: the state machine's apply listener (Raft tick thread) only drops a small event in a
bounded queue when an execution record is applied on the leader. The ``notify`` thread turns an
event into deliveries once every execution of the run is final (one notification per run, not
per node or output chunk as in Dkron), applies the job's ``notify_on`` (``always``, ``failure``,
``change``), and hands the deliveries to sender threads. A failed delivery is retried with
exponential backoff (``notification-retries``), each attempt bounded by ``notification-timeout``.
Nothing here runs on the scheduler's, the dispatcher's or the Raft thread, so a slow or dead
endpoint never delays a run; when the queue is full, events are dropped and counted.

Once a run's deliveries are done (sent or given up), the leader commits a ``notified`` mark. A
server that becomes leader sends the notifications of recent finished runs that have no mark:
the old leader's unsent ones are not lost, and a notification the old leader sent but had not
marked yet is sent at most once more.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from dkron.logcontext import run_context
from dkron.notify import templates, webhook
from dkron.notify.smtp import CONTROL, SmtpSettings, describe, send_message
from dkron.store import followups
from dkron.store.notified import is_notified
from dkron.store.queries import Reader, execution_json

log = logging.getLogger("dkron.notify")

#: Execution statuses that end a run and are reported (skipped/missed ticks never ran).
POST_STATUSES = ("success", "failed", "lost")
FINAL_STATUSES = ("success", "failed", "skipped", "missed", "lost")
NOTIFY_ON = ("always", "failure", "change")
#: How far back a new leader looks for finished runs whose notifications were never marked.
RESEND_WINDOW = timedelta(minutes=15)
MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class NotifyConfig:
    smtp: SmtpSettings
    mail_payload: str = ""
    pre_endpoint: str = ""
    pre_payload: str = ""
    pre_headers: dict[str, str] = field(default_factory=dict)
    post_endpoint: str = ""
    post_payload: str = ""
    post_headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 1.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NotifyConfig:
        """Build from the agent's options; raises ``ValueError`` naming the bad option."""
        for option in ("mail-payload", "pre-webhook-payload", "webhook-payload"):
            try:
                templates.check_template(config.get(option) or "")
            except templates.TemplateError as exc:
                raise ValueError(f"{option}: not a valid template: {exc}") from None
        pre, post = config.get("pre-webhook-endpoint") or "", config.get("webhook-endpoint") or ""
        return cls(
            smtp=SmtpSettings.from_settings(config),
            mail_payload=config.get("mail-payload") or "",
            pre_endpoint=webhook.check_endpoint(pre, "pre-webhook-endpoint") if pre else "",
            pre_payload=config.get("pre-webhook-payload") or "",
            pre_headers=webhook.parse_headers(config.get("pre-webhook-headers") or [], "pre-webhook-headers"),
            post_endpoint=webhook.check_endpoint(post, "webhook-endpoint") if post else "",
            post_payload=config.get("webhook-payload") or "",
            post_headers=webhook.parse_headers(config.get("webhook-headers") or [], "webhook-headers"),
            timeout=float(config.get("notification-timeout") or 10.0),
            retries=int(config.get("notification-retries") if config.get("notification-retries") is not None else 3),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.smtp.host or self.pre_endpoint or self.post_endpoint)


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    channel: str = field(compare=False)  # email | webhook | pre-webhook
    key: str = field(compare=False)
    job: str = field(compare=False)
    run_id: str = field(compare=False)
    send: Callable[[], None] = field(compare=False)
    attempts_left: int = field(compare=False)
    delay: float = field(compare=False)


class _Seen:
    """A bounded set (oldest forgotten first)."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._items: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> None:
        self._items[key] = None
        if len(self._items) > self.size:
            self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._items


class Notifier:
    def __init__(
        self,
        config: NotifyConfig,
        db_path: str,
        write: Callable[..., Any],
        *,
        node_name: str,
        is_leader: Callable[[], bool],
        queue_size: int = 1000,
        max_pending: int = 256,
        senders: int = 4,
    ) -> None:
        self.config = config
        self.reader = Reader(db_path)
        self.write = write
        self.node_name = node_name
        self.is_leader = is_leader
        self._events: queue.Queue[tuple[str, str, str, int]] = queue.Queue(maxsize=queue_size)
        self._sends: queue.Queue[_Delivery | None] = queue.Queue()
        self._delayed: list[_Delivery] = []
        self._delayed_lock = threading.Lock()
        self._seq = itertools.count()
        self._pending: dict[str, int] = {}
        self._pending_jobs: dict[str, str] = {}
        self._marks: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._done = _Seen()
        self._pre_done = _Seen()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._senders = senders
        # Runs with deliveries in flight (or waiting for a retry). Each holds its rendered messages
        # (output up to 256 KB), so this bounds memory when an endpoint is down for long.
        self.max_pending = max_pending
        #: (channel, outcome) -> count; outcome is sent | failed | dropped. Read by /metrics.
        self.counts: dict[tuple[str, str], int] = {}
        self._last_drop_log = 0.0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if not self.config.enabled:
            return
        self._threads = [threading.Thread(target=self._work, name="notify", daemon=True)]
        self._threads += [
            threading.Thread(target=self._send_loop, name=f"notify-send-{i}", daemon=True) for i in range(self._senders)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        for _ in range(self._senders):
            self._sends.put(None)
        for thread in self._threads:
            thread.join(timeout)

    # -- the apply listener (Raft tick thread: never block) ------------------------------------
    def on_applied(self, command: str, payload: dict[str, Any], result: Any) -> None:
        if command != "record" or not self.config.enabled or not self.is_leader():
            return
        for ex in payload.get("executions", ()):
            status = ex.get("status")
            event = (ex["job_name"], ex.get("run_id") or ex["id"], int(ex.get("attempt") or 1))
            # The recorder merges a short run's "running" and final records into one: the first
            # record of a run that ran (whatever its status) is its start.
            if self.config.pre_endpoint and status in ("running", "success", "failed"):
                self._offer(("pre", *event))
            if status in POST_STATUSES:
                self._offer(("post", *event))

    def _offer(self, event: tuple[str, str, str, int]) -> None:
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self._count(event[0], "dropped")
            now = time.monotonic()
            if now - self._last_drop_log > 10:
                self._last_drop_log = now
                log.warning("notification queue full: dropping notifications (endpoints too slow or down?)")

    def _count(self, channel: str, outcome: str) -> None:
        with self._lock:
            self.counts[(channel, outcome)] = self.counts.get((channel, outcome), 0) + 1

    # -- the notify thread ---------------------------------------------------------------------
    def _work(self) -> None:
        leading = False
        last_flush = time.monotonic()
        while not self._stop.is_set():
            try:
                now_leading = self.is_leader()
                if now_leading and not leading:
                    self._resend_unmarked()
                leading = now_leading
                self._release_due()
                try:
                    kind, job, run_id, attempt = self._events.get(timeout=0.2)
                except queue.Empty:
                    pass
                else:
                    with run_context(job, run_id):
                        if kind == "post":
                            self._post(job, run_id, attempt)
                        else:
                            self._pre(job, run_id)
                if time.monotonic() - last_flush >= 1.0:
                    last_flush = time.monotonic()
                    self._flush_marks()
            except Exception:  # never let one bad event stop notifications
                log.exception("notification worker error")
                time.sleep(0.5)

    def _run_executions(self, job: str, run_id: str, attempt: int) -> list[dict[str, Any]]:
        db = self.reader.db
        rows = db.execute(
            "SELECT * FROM executions WHERE job=? AND (run_id=? OR (run_id='' AND id=?)) AND attempt=? ORDER BY node",
            (job, run_id, run_id, attempt),
        ).fetchall()
        return [{**execution_json(row), "group": row["grp"]} for row in rows]

    def _expected_nodes(self, run_id: str) -> int:
        row = self.reader.db.execute("SELECT node FROM launches WHERE run_id=?", (run_id,)).fetchone()
        return len([n for n in row[0].split(",") if n]) if row and row[0] else 1

    def _previous_status(self, job: str, run_id: str, started: str) -> str | None:
        """The job's previous run's final outcome (from the replicated history: deterministic)."""
        rows = self.reader.db.execute(
            "SELECT run_id, attempt, status FROM executions WHERE job=? AND run_id != ? AND status IN"
            " ('success','failed','lost') AND started_at < ? ORDER BY started_at DESC, id DESC LIMIT 50",
            (job, run_id, started),
        ).fetchall()
        if not rows:
            return None
        previous = rows[0]["run_id"]
        same = [r for r in rows if r["run_id"] == previous]
        top = max(r["attempt"] for r in same)
        return "success" if all(r["status"] == "success" for r in same if r["attempt"] == top) else "failed"

    def _post(self, job_name: str, run_id: str, attempt: int) -> None:
        key = f"{run_id}#{attempt}"
        if key in self._done:
            return
        job = self.reader.get_job(job_name, with_children=False)
        if job is None:
            return
        executions = self._run_executions(job_name, run_id, attempt)
        if (
            not executions
            or any(ex["status"] not in FINAL_STATUSES for ex in executions)
            # The launch names the first attempt's nodes; a retry attempt is complete when its records are.
            or (attempt == 1 and len(executions) < self._expected_nodes(run_id))
        ):
            return  # another node's record is still to come: the last one triggers the notification
        if self._retry_follows(run_id, attempt):
            self._done.add(key)  # a run is reported once, by its last attempt
            return
        if is_notified(self.reader.db, key):
            self._done.add(key)
            return
        self._done.add(key)
        values = templates.variables(job, executions, reporting_node=self.node_name, finished=True)
        if not self._wanted(job, values, run_id):
            return
        deliveries = []
        recipients = [a.strip() for a in (job.get("owner_email") or "").split(",") if a.strip()]
        if self.config.smtp.host and recipients:
            message = self._email(job_name, values, recipients)
            deliveries.append(("email", lambda: self._send_email(message, recipients)))
        if self.config.post_endpoint:
            body = (
                templates.render(self.config.post_payload, values)
                if self.config.post_payload
                else templates.default_payload(values)
            )
            sender = self._webhook_sender(self.config.post_endpoint, body, self.config.post_headers)
            deliveries.append(("webhook", sender))
        self._schedule(key, job_name, run_id, deliveries, mark=True)

    def _retry_follows(self, run_id: str, attempt: int) -> bool:
        """A failed attempt whose retry is already committed (the state machine decides that)."""
        retry = followups.followup_id(run_id, attempt + 1)
        return self.reader.db.execute("SELECT 1 FROM followups WHERE id=?", (retry,)).fetchone() is not None

    def _wanted(self, job: dict[str, Any], values: dict[str, Any], run_id: str) -> bool:
        policy = job.get("notify_on") or "always"
        failed = values["Success"] != "true"
        if policy == "always":
            return True
        if policy == "failure":
            return failed
        previous = self._previous_status(job["name"], run_id, values["StartTime"] or "9999")
        if previous is None:
            return failed  # a first run is news only if it failed
        return previous != ("failed" if failed else "success")

    def _pre(self, job_name: str, run_id: str) -> None:
        if run_id in self._pre_done:
            return
        self._pre_done.add(run_id)
        job = self.reader.get_job(job_name, with_children=False)
        if job is None:
            return
        executions = self._run_executions(job_name, run_id, 1) or [{"run_id": run_id, "job_name": job_name}]
        values = templates.variables(job, executions, reporting_node=self.node_name, finished=False)
        body = (
            templates.render(self.config.pre_payload, values)
            if self.config.pre_payload
            else templates.default_payload(values)
        )
        sender = self._webhook_sender(self.config.pre_endpoint, body, self.config.pre_headers)
        self._schedule(f"pre:{run_id}", job_name, run_id, [("pre-webhook", sender)], mark=False)

    # -- deliveries ----------------------------------------------------------------------------
    def _email(self, job: str, values: dict[str, Any], recipients: list[str]) -> EmailMessage:
        settings = self.config.smtp
        message = EmailMessage()
        message["From"] = settings.sender
        message["To"] = ", ".join(recipients)
        status = "Success" if values["Success"] == "true" else "Failed"
        message["Subject"] = CONTROL.sub(" ", f"{settings.subject_prefix}{status} {job} execution report")
        message["Date"] = formatdate(localtime=False, usegmt=True)
        domain = settings.envelope_sender.rpartition("@")[2].strip("<>") or "localhost"
        message["Message-ID"] = make_msgid("dkron", domain=domain)
        message["X-Dkron-Job"] = CONTROL.sub(" ", job)
        message["X-Dkron-Run"] = CONTROL.sub(" ", values["RunId"])
        body = templates.render(self.config.mail_payload, values) if self.config.mail_payload else values["Report"]
        message.set_content(body)
        return message

    def _send_email(self, message: EmailMessage, recipients: list[str]) -> None:
        try:
            accepted = send_message(self.config.smtp, message, recipients)
        except Exception as exc:
            raise RuntimeError(self.config.smtp.redact(describe(exc))) from None
        if not accepted:
            raise RuntimeError("the SMTP server refused every recipient")

    def _webhook_sender(self, url: str, body: str, headers: dict[str, str]) -> Callable[[], None]:
        def send() -> None:
            webhook.post(url, body, headers, self.config.timeout)

        return send

    def _schedule(
        self, key: str, job: str, run_id: str, deliveries: list[tuple[str, Callable[[], None]]], *, mark: bool
    ) -> None:
        if not deliveries:
            return
        with self._lock:
            if len(self._pending) >= self.max_pending:
                for channel, _ in deliveries:
                    self.counts[(channel, "dropped")] = self.counts.get((channel, "dropped"), 0) + 1
                log.warning("too many notifications pending: dropping this run's")
                return
            self._pending[key] = len(deliveries)
            if mark:
                self._pending_jobs[key] = job
        retries, backoff = self.config.retries, self.config.backoff
        for channel, send in deliveries:
            self._sends.put(_Delivery(0.0, next(self._seq), channel, key, job, run_id, send, retries, backoff))

    def _release_due(self) -> None:
        now = time.monotonic()
        with self._delayed_lock:
            while self._delayed and self._delayed[0].due <= now:
                self._sends.put(heapq.heappop(self._delayed))

    def _send_loop(self) -> None:
        while True:
            delivery = self._sends.get()
            if delivery is None or self._stop.is_set():
                return
            with run_context(delivery.job, delivery.run_id):
                try:
                    delivery.send()
                except Exception as exc:
                    if delivery.attempts_left > 0 and not self._stop.is_set():
                        log.warning(
                            "%s notification failed (%s); retrying in %.0fs", delivery.channel, exc, delivery.delay
                        )
                        delivery.attempts_left -= 1
                        delivery.due = time.monotonic() + delivery.delay
                        delivery.delay = min(delivery.delay * 2, MAX_BACKOFF)
                        with self._delayed_lock:
                            heapq.heappush(self._delayed, delivery)
                        continue
                    log.error("%s notification failed, giving up: %s", delivery.channel, exc)
                    self._count(delivery.channel, "failed")
                else:
                    log.info("%s notification sent", delivery.channel)
                    self._count(delivery.channel, "sent")
                self._finish(delivery.key)

    def _finish(self, key: str) -> None:
        with self._lock:
            left = self._pending.get(key, 1) - 1
            if left > 0:
                self._pending[key] = left
                return
            self._pending.pop(key, None)
            job = self._pending_jobs.pop(key, None)
            if job is not None:
                self._marks.append({"key": key, "job": job})

    def flush(self) -> None:
        """Commit the pending "notified" marks now (a leader about to step down)."""
        self._flush_marks(timeout=2)

    def _flush_marks(self, timeout: float = 5) -> None:
        with self._lock:
            marks, self._marks = self._marks, []
        if not marks or not self.is_leader():
            return
        now_ms = int(time.time() * 1000)
        try:
            payload = {"runs": marks, "now_ms": now_ms, "prune_before_ms": now_ms - 86_400_000}
            self.write("notified", payload, timeout=timeout)
        except Exception as exc:  # not leading any more, or no quorum: the next leader may re-send once
            log.warning("could not record %d sent notification(s): %s", len(marks), exc)

    def _resend_unmarked(self) -> None:
        """On becoming leader: queue the recent finished runs nobody marked as notified."""
        since = (datetime.now(UTC) - RESEND_WINDOW).strftime("%Y-%m-%dT%H:%M:%S")
        rows = self.reader.db.execute(
            "SELECT job, CASE WHEN run_id='' THEN id ELSE run_id END AS run, attempt FROM executions"
            " WHERE status IN ('success','failed','lost') AND finished_at >= ?"
            " GROUP BY job, run, attempt ORDER BY MAX(finished_at) LIMIT 1000",
            (since,),
        ).fetchall()
        for row in rows:
            if not is_notified(self.reader.db, f"{row['run']}#{row['attempt']}"):
                self._offer(("post", row["job"], row["run"], row["attempt"]))

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)
