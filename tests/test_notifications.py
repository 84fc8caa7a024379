"""Notifications from a real agent: SMTP (STARTTLS + AUTH, aiosmtpd) and webhooks (http.server)."""

from __future__ import annotations

import itertools
import json
import socket
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dkron.localcluster import wait_for
from dkron.testing import AgentProcess

pytest.importorskip("aiosmtpd", reason="the notification tests need aiosmtpd (dev dependency)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "processors" / "email" / "tests"))
from email_support import SmtpServer, make_tls_files, start_smtp


class Receiver:
    """A real HTTP server on 127.0.0.1 recording each POST; the first ``fail_first`` answer 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                with outer._cond:
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    failing = len(outer.requests) <= outer.fail_first
                    outer._cond.notify_all()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, path: str | None = None, timeout: float = 20) -> list[dict[str, Any]]:
        def matching() -> list[dict[str, Any]]:
            return [r for r in self.requests if path is None or r["path"] == path]

        with self._cond:
            self._cond.wait_for(lambda: len(matching()) >= count, timeout)
            return matching()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("notify-tls"))


@pytest.fixture
def smtp(tls_files):
    server = start_smtp(tls_files, auth={"dkron": "s3cret"}, tls="starttls")
    yield server
    server.stop()


def shell_job(name: str, command: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "@every 1h",
        "executor": "shell",
        "executor_config": {"command": command, "shell": "true"},
        **extra,
    }


def finished_runs(agent: AgentProcess, job: str) -> list[dict[str, Any]]:
    executions = agent.get(f"/v1/jobs/{job}/executions").json()
    return [e for e in executions if e["status"] not in ("running",)]


# aiosmtpd does not count SMTPS as TLS for AUTH (see email_support.start_smtp) and says so.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_over_smtps_with_auth_and_a_wrong_password_is_refused(agent_factory, tls_files, tmp_path):
    """SMTPS (TLS from the first byte, port 465 style) with AUTH; a wrong password sends nothing."""
    smtps = start_smtp(tls_files, auth={"dkron": "s3cret"}, tls="tls")
    try:
        common = (
            "--mail-host=127.0.0.1",
            f"--mail-port={smtps.port}",
            "--mail-username=dkron",
            "--mail-tls=tls",
            f"--mail-ca-file={tls_files.ca_file}",
            "--mail-from=dkron@example.test",
        )
        agent = agent_factory(tmp_path / "ok", extra_args=common, env={"DKRON_MAIL_PASSWORD": "s3cret"}).start()
        assert (
            agent.post("/v1/jobs", shell_job("smtps", "echo over tls", owner_email="owner@example.test")).status == 201
        )
        assert agent.run_and_wait("smtps")["status"] == "success"
        [mail] = smtps.wait_for_messages(1)
        assert mail.tls and mail.login == "dkron" and mail.rcpt_tos == ["owner@example.test"]
        assert "over tls" in mail.message.get_content()
        agent.stop()

        wrong = agent_factory(tmp_path / "wrong", extra_args=common, env={"DKRON_MAIL_PASSWORD": "nope"}).start()
        assert wrong.post("/v1/jobs", shell_job("smtps", "echo x", owner_email="owner@example.test")).status == 201
        assert wrong.run_and_wait("smtps")["status"] == "success"  # a mail failure never fails the run
        wait_for(lambda: ("dkron", False) in smtps.logins, 15, "the refused login")
        time.sleep(0.5)
        assert len(smtps.messages) == 1, "a mail went out with a wrong password"
    finally:
        smtps.stop()


def test_email_over_starttls_with_auth_and_webhooks_fire_once_per_run(
    agent_factory, smtp: SmtpServer, receiver, tls_files
):
    agent = agent_factory(
        extra_args=(
            "--mail-host=127.0.0.1",
            f"--mail-port={smtp.port}",
            "--mail-username=dkron",
            "--mail-tls=starttls",
            f"--mail-ca-file={tls_files.ca_file}",
            "--mail-from=dkron@example.test",
            f"--webhook-endpoint={receiver.url}/post",
            # Dkron's Go-template spelling and Jinja2 both work.
            "--webhook-payload={{.JobName}} {{ Success }} {{ Output | trim }} {{ NodeName }}",
            "--webhook-headers=X-Signature: a:b:c",
            f"--pre-webhook-endpoint={receiver.url}/pre",
            "--pre-webhook-payload=starting {{ JobName }} run {{ RunId }}",
        ),
        env={"DKRON_MAIL_PASSWORD": "s3cret"},
    ).start()
    job = shell_job("mailed", "echo hello from the job", owner_email="owner@example.test")
    assert agent.post("/v1/jobs", job).status == 201
    execution = agent.run_and_wait("mailed")
    assert execution["status"] == "success"

    [mail] = smtp.wait_for_messages(1)
    assert mail.tls and mail.login == "dkron"
    assert mail.rcpt_tos == ["owner@example.test"]
    assert mail.message["Subject"] == "[Dkron]Success mailed execution report"
    body = mail.message.get_content()
    assert "Executed: mailed" in body and "Success: true" in body and "hello from the job" in body

    [post] = receiver.wait(1, "/post")
    assert post["body"] == "mailed true hello from the job node1"
    assert post["headers"]["X-Signature"] == "a:b:c"  # split at the first colon only
    [pre] = receiver.wait(1, "/pre")
    assert pre["body"] == f"starting mailed run {execution['run_id']}"

    time.sleep(2)  # nothing more arrives: once per run, not per record or output chunk
    assert len(smtp.messages) == 1 and len(receiver.requests) == 2


def test_notify_on_change_sends_only_when_the_outcome_flips(agent_factory, receiver, tmp_path):
    agent = agent_factory(extra_args=(f"--webhook-endpoint={receiver.url}/hook",)).start()
    flag = tmp_path / "exit-code"
    job = shell_job("flappy", f"exit $(cat {flag})", notify_on="change")
    assert agent.post("/v1/jobs", job).status == 201
    outcomes = []
    for code in (0, 1, 1, 0, 0):
        flag.write_text(str(code))
        outcomes.append(agent.run_and_wait("flappy")["status"])
    assert outcomes == ["success", "failed", "failed", "success", "success"]
    hooks = receiver.wait(2)
    time.sleep(1.5)
    bodies = [json.loads(r["body"]) for r in receiver.requests]
    # A first success is no news; then failure (a change), failure (same), success (a change), success (same).
    assert [(b["job"], b["status"], b["success"]) for b in bodies] == [
        ("flappy", "failed", False),
        ("flappy", "success", True),
    ], hooks


def test_notify_on_failure_and_a_failed_delivery_is_retried(agent_factory, tmp_path):
    receiver = Receiver(fail_first=1)
    try:
        agent = agent_factory(
            extra_args=(f"--webhook-endpoint={receiver.url}/hook", "--notification-retries=2")
        ).start()
        assert agent.post("/v1/jobs", shell_job("ok-job", "true", notify_on="failure")).status == 201
        assert agent.post("/v1/jobs", shell_job("bad-job", "exit 2", notify_on="failure")).status == 201
        agent.run_and_wait("ok-job")
        agent.run_and_wait("bad-job")
        requests = receiver.wait(2)
        time.sleep(2)
        # The first answer was a 500: the same notification came again; the success sent nothing.
        assert len(receiver.requests) == 2
        assert {json.loads(r["body"])["job"] for r in requests} == {"bad-job"}
    finally:
        receiver.close()


class Blackhole:
    """Accepts connections and never answers: a notification endpoint that is down (hung)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_notification_endpoint_that_is_down_does_not_delay_the_next_run(agent_factory):
    hole = Blackhole()
    try:
        agent = agent_factory(
            extra_args=(
                f"--webhook-endpoint=http://127.0.0.1:{hole.port}/hook",
                f"--pre-webhook-endpoint=http://127.0.0.1:{hole.port}/pre",
                "--notification-timeout=5s",
                "--notification-retries=3",
            )
        ).start()
        job = {**shell_job("every-second", "echo tick"), "schedule": "@every 1s"}
        assert agent.post("/v1/jobs", job).status == 201

        def six_runs() -> list[dict[str, Any]] | None:
            done = [e for e in finished_runs(agent, "every-second") if e["status"] == "success"]
            return done if len(done) >= 6 else None

        runs = agent.wait_for(six_runs, timeout=30)
        assert len(hole.connections) >= 2  # the notifier is stuck on the endpoint meanwhile
        scheduled = sorted(_ts(e["scheduled_at"]) for e in runs)
        assert all(b - a == pytest.approx(1.0, abs=0.01) for a, b in itertools.pairwise(scheduled))
        for e in runs:
            assert _ts(e["started_at"]) - _ts(e["scheduled_at"]) < 0.5, e  # each run on time
    finally:
        hole.close()


def test_a_restart_does_not_send_a_notification_again(agent_factory, receiver):
    agent = agent_factory(extra_args=(f"--webhook-endpoint={receiver.url}/hook",)).start()
    assert agent.post("/v1/jobs", shell_job("once", "true")).status == 201
    agent.run_and_wait("once")
    receiver.wait(1)
    time.sleep(1.5)  # the "notified" mark is committed within a second
    agent.stop()
    agent.start()
    time.sleep(3)
    assert len(receiver.requests) == 1


def test_bad_notification_options_are_refused_at_start(agent_factory, tmp_path):
    for args, message in (
        (("--webhook-endpoint=ftp://x",), "webhook-endpoint: expected an http(s) URL"),
        (("--webhook-endpoint=http://x", "--webhook-headers=NoColon"), "webhook-headers: expected 'Name: value'"),
        (("--webhook-payload={% if %}",), "webhook-payload: not a valid template"),
    ):
        agent = agent_factory(extra_args=args)
        with pytest.raises(RuntimeError) as err:
            agent.start(wait=10)
        assert message in str(err.value)
        assert "Traceback" not in str(err.value)


def test_email_over_smtps_with_a_mail_payload_template(agent_factory, tls_files):
    # (aiosmtpd offers AUTH only after STARTTLS, not on SMTPS: AUTH is tested over STARTTLS above.)
    smtps = start_smtp(tls_files, tls="tls")
    try:
        agent = agent_factory(
            extra_args=(
                "--mail-host=localhost",
                f"--mail-port={smtps.port}",
                "--mail-tls=tls",
                f"--mail-ca-file={tls_files.ca_file}",
                "--mail-subject-prefix=[cron] ",
                "--mail-payload={{ JobName }} ended {{ Status }} with exit output: {{ Output | trim }}",
            ),
        ).start()
        job = shell_job("smtps-job", "echo boom; exit 4", owner_email="a@example.test, b@example.test")
        assert agent.post("/v1/jobs", job).status == 201
        assert agent.run_and_wait("smtps-job")["status"] == "failed"
        [mail] = smtps.wait_for_messages(1)
        assert mail.tls
        assert sorted(mail.rcpt_tos) == ["a@example.test", "b@example.test"]
        assert mail.message["Subject"] == "[cron] Failed smtps-job execution report"
        assert mail.message.get_content().startswith("smtps-job ended failed with exit output:")
        assert "boom" in mail.message.get_content()
    finally:
        smtps.stop()


def test_a_run_that_succeeds_on_a_retry_is_reported_once_as_a_success(agent_factory, receiver, tmp_path):
    agent = agent_factory(extra_args=(f"--webhook-endpoint={receiver.url}/hook", "--retry-backoff-base=0.2s")).start()
    tries = tmp_path / "tries"
    # Fails on its first two attempts, succeeds on the third.
    job = shell_job("third-time", f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ]", retries=3)
    assert agent.post("/v1/jobs", job).status == 201
    assert agent.post("/v1/jobs/third-time/run").status == 202
    agent.wait_for(
        lambda: any(e["status"] == "success" for e in agent.get("/v1/jobs/third-time/executions").json()), timeout=30
    )
    receiver.wait(1)
    time.sleep(1.5)  # a notification for a failed attempt would have arrived by now
    bodies = [json.loads(r["body"]) for r in receiver.requests]
    assert [(b["job"], b["status"], b["attempt"]) for b in bodies] == [("third-time", "success", 3)], bodies
