"""The email processor against real SMTP servers (aiosmtpd) on 127.0.0.1: plain, AUTH, STARTTLS, SMTPS."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from email_support import SmtpServer, TlsFiles

import dkron_processor_email as plugin
from dkron.contracts import ConfigError
from dkron.testing import IsolatedPluginHost, free_port
from dkron_processor_email import EmailProcessor
from dkron_processor_email.processor import MAX_OUTPUT_BYTES, placeholder

LOGGER = "dkron.processor.email"

# aiosmtpd warns, in its server thread, about AUTH without TLS: the plain-SMTP AUTH tests want exactly that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


def _execution(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "1715000000000000000-node1",
        "job_name": "backup",
        "run_id": "backup@1715000000000",
        "attempt": 1,
        "node_name": "node1",
        "started_at": "2024-05-06T12:53:20Z",
        "finished_at": "2024-05-06T12:53:21Z",
        "status": "success",
        "success": True,
        "error": "",
        "exit_code": 0,
        "output": "line 1\nline 2\n",
        **overrides,
    }


def _body(received: Any) -> str:
    return received.message.get_content().replace("\r\n", "\n")  # lines end in CRLF on the wire


def _run(settings: dict[str, Any], config: dict[str, str], execution: dict[str, Any] | None = None) -> Any:
    processor = EmailProcessor(settings)
    validated = processor.validate(config)
    return processor.process(execution if execution is not None else _execution(), validated)


# -- plain SMTP ----------------------------------------------------------------------------------


def test_report_is_sent_and_output_replaced(smtp_server: SmtpServer) -> None:
    execution = _execution()
    result = _run(smtp_server.settings(), {"emails": "ops@example.test, dev@example.test"}, execution)
    [received] = smtp_server.wait_for_messages()
    assert result == {**execution, "output": "Output e-mailed to 2 recipient(s)"}
    assert execution["output"] == "line 1\nline 2\n"  # the caller's record is not mutated
    assert received.mail_from == "dkron@example.test"
    assert received.rcpt_tos == ["ops@example.test", "dev@example.test"]
    assert received.message["From"] == "dkron@example.test"
    assert received.message["To"] == "ops@example.test, dev@example.test"
    assert received.message["Subject"] == "[Dkron]Success backup execution report"  # Dkron's exact form
    assert received.message["Message-ID"].endswith("@example.test>")
    assert received.message["Date"]
    assert received.message["X-Dkron-Job"] == "backup"
    assert received.message.get_content_type() == "text/plain"
    body = _body(received)
    for line in (
        "Executed: backup",
        "Execution: 1715000000000000000-node1",
        "Node: node1",
        "Start time: 2024-05-06T12:53:20Z",
        "End time: 2024-05-06T12:53:21Z",
        "Success: true",
    ):
        assert line + "\n" in body
    assert body.endswith("Output:\nline 1\nline 2\n")
    assert not received.tls and received.login is None


def test_failure_subject_and_error(smtp_server: SmtpServer) -> None:
    execution = _execution(status="failed", success=False, error="exit status 3", exit_code=3, output="boom\n")
    _run(smtp_server.settings(), {"emails": "ops@example.test"}, execution)
    [received] = smtp_server.wait_for_messages()
    assert received.message["Subject"] == "[Dkron]Failed backup execution report"
    body = _body(received)
    assert "Success: false\nError: exit status 3\nExit code: 3\n" in body
    assert body.endswith("boom\n")


@pytest.mark.parametrize("spelling", ["true", "1", "T", "True"])
def test_forward_keeps_the_output(smtp_server: SmtpServer, spelling: str) -> None:
    execution = _execution()
    assert _run(smtp_server.settings(), {"emails": "ops@example.test", "forward": spelling}, execution) == execution
    assert len(smtp_server.wait_for_messages()) == 1


def test_on_failure_skips_successes(smtp_server: SmtpServer) -> None:
    settings = smtp_server.settings()
    success = _execution()
    assert _run(settings, {"emails": "ops@example.test", "on": "failure"}, success) == success  # output kept
    failure = _execution(id="2-node1", success=False, status="failed", output="bad\n")
    assert _run(settings, {"emails": "ops@example.test", "on": "failure"}, failure)["output"] == placeholder(1)
    [received] = smtp_server.wait_for_messages()
    time.sleep(0.2)  # nothing else arrives late
    assert len(smtp_server.messages) == 1
    assert received.message["Subject"] == "[Dkron]Failed backup execution report"


def test_on_success_skips_failures(smtp_server: SmtpServer) -> None:
    settings = smtp_server.settings()
    failure = _execution(success=False, status="failed")
    assert _run(settings, {"emails": "ops@example.test", "on": "success"}, failure) == failure
    assert _run(settings, {"emails": "ops@example.test", "on": "SUCCESS"}, _execution())["output"] == placeholder(1)
    [received] = smtp_server.wait_for_messages()
    assert received.message["Subject"].startswith("[Dkron]Success")


def test_include_output_false(smtp_server: SmtpServer) -> None:
    result = _run(smtp_server.settings(), {"emails": "ops@example.test", "include_output": "false"})
    [received] = smtp_server.wait_for_messages()
    body = _body(received)
    assert "line 1" not in body and body.endswith("Output: (not included)\n")
    assert result["output"] == placeholder(1)  # forward still decides what the record keeps


def test_subject_template_and_prefix(smtp_server: SmtpServer) -> None:
    settings = smtp_server.settings(**{"mail-subject-prefix": "[prod] "})
    config = {"emails": "ops@example.test", "subject": "{status}: {job} on {node} #{attempt} ({execution_id}) {{x}}"}
    _run(settings, config)
    [received] = smtp_server.wait_for_messages()
    assert received.message["Subject"] == "[prod] Success: backup on node1 #1 (1715000000000000000-node1) {x}"


def test_unicode_and_bytes_output(smtp_server: SmtpServer) -> None:
    settings = smtp_server.settings(**{"mail-subject-prefix": "[Dkrön]"})
    _run(settings, {"emails": "ops@example.test"}, _execution(output="héllo wörld ✓\n"))
    _run(settings, {"emails": "ops@example.test"}, _execution(id="b", output=b"raw \xff bytes\n"))
    first, second = smtp_server.wait_for_messages(2)
    assert first.message["Subject"] == "[Dkrön]Success backup execution report"
    assert _body(first).endswith("héllo wörld ✓\n")
    assert _body(second).endswith("raw \ufffd bytes\n")


def test_long_output_is_trimmed_to_its_tail(smtp_server: SmtpServer) -> None:
    output = "x" * (MAX_OUTPUT_BYTES + 5000) + "THE END\n"
    _run(smtp_server.settings(), {"emails": "ops@example.test"}, _execution(output=output, output_truncated=True))
    [received] = smtp_server.wait_for_messages()
    body = _body(received)
    assert body.endswith("THE END\n")
    assert len(body.encode()) < MAX_OUTPUT_BYTES + 1000
    assert "(the first 5008 bytes are left out of this message; the agent kept only the tail of it)" in body


def test_recipients_refused_by_the_server_are_not_counted(smtp_factory: Callable[..., SmtpServer]) -> None:
    server = smtp_factory()

    async def handle_RCPT(smtp: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.endswith("@refused.test"):
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    server.controller.handler.handle_RCPT = handle_RCPT
    result = _run(server.settings(), {"emails": "a@refused.test,ops@example.test"})
    [received] = server.wait_for_messages()
    assert received.rcpt_tos == ["ops@example.test"]
    assert result["output"] == placeholder(1)


def test_display_name_in_mail_from(smtp_server: SmtpServer) -> None:
    _run(smtp_server.settings(**{"mail-from": "Dkron <cron@example.test>"}), {"emails": "ops@example.test"})
    [received] = smtp_server.wait_for_messages()
    assert received.mail_from == "cron@example.test"
    assert received.message["From"] == "Dkron <cron@example.test>"


def test_string_settings_are_accepted(smtp_server: SmtpServer) -> None:
    settings = smtp_server.settings(**{"mail-port": str(smtp_server.port), "mail-timeout": "2s", "mail-tls": "NONE"})
    assert _run(settings, {"emails": "ops@example.test"})["output"] == placeholder(1)
    assert len(smtp_server.wait_for_messages()) == 1


# -- AUTH ----------------------------------------------------------------------------------------


def test_auth_over_plain_smtp_on_loopback(smtp_factory: Callable[..., SmtpServer]) -> None:
    server = smtp_factory(auth={"dkron": "s3cret"})
    settings = server.settings(**{"mail-username": "dkron", "mail-password": "s3cret"})
    assert _run(settings, {"emails": "ops@example.test"})["output"] == placeholder(1)
    [received] = server.wait_for_messages()
    assert received.login == "dkron"
    assert server.logins == [("dkron", True)]


def test_wrong_password_is_logged_without_it(
    smtp_factory: Callable[..., SmtpServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = smtp_factory(auth={"dkron": "s3cret"})
    settings = server.settings(**{"mail-username": "dkron", "mail-password": "Wr0ngPassw0rd"})
    execution = _execution()
    assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    assert server.logins and all(login == ("dkron", False) for login in server.logins)  # PLAIN, then LOGIN
    assert server.messages == []
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "cannot e-mail job 'backup' execution '1715000000000000000-node1'" in message
    assert "SMTPAuthenticationError: 535" in message
    assert "Wr0ngPassw0rd" not in message


def test_server_requiring_auth_without_username(
    smtp_factory: Callable[..., SmtpServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = smtp_factory(auth={"dkron": "s3cret"})
    execution = _execution()
    assert _run(server.settings(), {"emails": "ops@example.test"}, execution) == execution
    assert server.messages == []
    assert "530" in caplog.text


def test_password_never_sent_in_clear_to_a_remote_host(caplog: pytest.LogCaptureFixture) -> None:
    # 192.0.2.1 (TEST-NET-1) is never contacted: the refusal comes before any connection.
    settings = {"mail-host": "192.0.2.1", "mail-port": 25, "mail-tls": "none", "mail-username": "u",
                "mail-password": "topsecret", "mail-timeout": 5.0}  # fmt: skip
    execution = _execution()
    started = time.monotonic()
    assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    assert time.monotonic() - started < 1.0
    assert "refusing to send the SMTP password unencrypted to 192.0.2.1" in caplog.text
    assert "topsecret" not in caplog.text


# -- TLS -----------------------------------------------------------------------------------------


def test_starttls_with_a_private_ca(smtp_factory: Callable[..., SmtpServer], tls_files: TlsFiles) -> None:
    server = smtp_factory(tls="starttls", auth={"dkron": "s3cret"})
    settings = server.settings(**{"mail-tls": "starttls", "mail-ca-file": str(tls_files.ca_file),
                                  "mail-username": "dkron", "mail-password": "s3cret"})  # fmt: skip
    assert _run(settings, {"emails": "ops@example.test"})["output"] == placeholder(1)
    [received] = server.wait_for_messages()
    assert received.tls and received.login == "dkron"


def test_starttls_is_the_default_and_verifies_the_certificate(
    smtp_factory: Callable[..., SmtpServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = smtp_factory(tls="starttls")
    settings = server.settings()
    del settings["mail-tls"]  # default: starttls, verified against the system CAs, which do not know ours
    execution = _execution()
    assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    assert server.messages == []
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_starttls_never_falls_back_to_plain(smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    execution = _execution()
    assert _run(smtp_server.settings(**{"mail-tls": "starttls"}), {"emails": "ops@example.test"}) == execution
    assert smtp_server.messages == []
    assert "SMTPNotSupportedError" in caplog.text


def test_smtps(smtp_factory: Callable[..., SmtpServer], tls_files: TlsFiles) -> None:
    server = smtp_factory(tls="tls")
    settings = server.settings(**{"mail-tls": "tls", "mail-ca-file": str(tls_files.ca_file)})
    assert _run(settings, {"emails": "ops@example.test"})["output"] == placeholder(1)
    [received] = server.wait_for_messages()
    assert received.tls


def test_unreadable_ca_file(smtp_factory: Callable[..., SmtpServer], caplog: pytest.LogCaptureFixture) -> None:
    server = smtp_factory(tls="starttls")
    settings = server.settings(**{"mail-tls": "starttls", "mail-ca-file": "/nonexistent/ca.pem"})
    execution = _execution()
    assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    assert "cannot e-mail job 'backup'" in caplog.text


# -- the server is missing, silent or slow -------------------------------------------------------


def test_no_mail_host_leaves_the_execution_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    execution = _execution()
    for settings in ({}, {"mail-host": "", "mail-port": 25}):
        assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    assert caplog.text.count("mail-host is not set on this agent") == 2


def test_bad_agent_settings_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    execution = _execution()
    for bad in ({"mail-tls": "ssl"}, {"mail-port": 70000}, {"mail-timeout": "soon"}, {"mail-port": "x"}):
        assert _run({"mail-host": "127.0.0.1", **bad}, {"emails": "ops@example.test"}, execution) == execution
    for name in ("mail-tls", "mail-port", "mail-timeout", "mail-port"):
        assert name in caplog.text


def test_connection_refused(caplog: pytest.LogCaptureFixture) -> None:
    settings = {"mail-host": "127.0.0.1", "mail-port": free_port(), "mail-tls": "none", "mail-timeout": 5.0}
    execution = _execution()
    started = time.monotonic()
    assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    assert time.monotonic() - started < 5.0
    assert "ConnectionRefusedError" in caplog.text


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections (in the kernel's backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_silent_server_returns_within_the_timeout(silent_server: int, caplog: pytest.LogCaptureFixture) -> None:
    settings = {"mail-host": "127.0.0.1", "mail-port": silent_server, "mail-tls": "none", "mail-timeout": 1.0}
    execution = _execution()
    started = time.monotonic()
    assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 1.5, elapsed
    assert "cannot e-mail job 'backup'" in caplog.text


@pytest.fixture
def dripping_server() -> Iterator[int]:
    """A server that sends its greeting one byte every 0.2 s: each read succeeds, the whole never ends."""
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.1)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                for byte in b"220-" + b"x" * 200:
                    if stop.wait(0.2):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_a_slow_server_cannot_stretch_the_timeout(dripping_server: int) -> None:
    settings = {"mail-host": "127.0.0.1", "mail-port": dripping_server, "mail-tls": "none", "mail-timeout": 1.0}
    execution = _execution()
    started = time.monotonic()
    assert _run(settings, {"emails": "ops@example.test"}, execution) == execution
    assert time.monotonic() - started <= 1.5


# -- validation ----------------------------------------------------------------------------------


def test_validate_normalises() -> None:
    config = EmailProcessor().validate(
        {
            "emails": " ops@example.test ,, dev@example.test,OPS@example.test ",
            "forward": "TRUE",
            "on": " Failure ",
            "include_output": "0",
            "subject": " {job} failed ",
            "reporting_node": "n1",
        }
    )
    assert config == {
        "emails": "ops@example.test,dev@example.test",
        "forward": "true",
        "on": "failure",
        "include_output": "false",
        "subject": "{job} failed",
        "reporting_node": "n1",
    }
    for address in ("a.b+tag@sub.example-x.test", "root@[127.0.0.1]", "x@[IPv6:::1]"):
        assert EmailProcessor().validate({"emails": address}) == {"emails": address}


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({}, "emails"),
        ({"emails": ""}, "emails"),
        ({"emails": " , "}, "emails"),
        ({"emails": "not-an-address"}, "emails"),
        ({"emails": "ops@example.test, @example.test"}, "emails"),
        ({"emails": "ops@"}, "emails"),
        ({"emails": "a b@example.test"}, "emails"),
        ({"emails": "ops@example.test\r\nBcc: x@evil.test"}, "emails"),
        ({"emails": "Ops <ops@example.test>"}, "emails"),
        ({"emails": "ops@-bad-.test"}, "emails"),
        ({"emails": "ops..x@example.test"}, "emails"),
        ({"emails": ",".join(f"u{i}@example.test" for i in range(101))}, "emails"),
        ({"emails": "ops@example.test", "forward": "yes"}, "forward"),
        ({"emails": "ops@example.test", "include_output": "maybe"}, "include_output"),
        ({"emails": "ops@example.test", "on": "sometimes"}, "on"),
        ({"emails": "ops@example.test", "subject": "{job} {jobname}"}, "subject"),
        ({"emails": "ops@example.test", "subject": "{job.__class__}"}, "subject"),
        ({"emails": "ops@example.test", "subject": "100% {"}, "subject"),
        ({"emails": "ops@example.test", "subject": "a\nBcc: x@evil.test"}, "subject"),
        ({"emails": "ops@example.test", "subject": "x" * 201}, "subject"),
        ({"emails": "ops@example.test", "email": "typo@example.test"}, "email"),
    ],
)
def test_invalid_config_names_the_key(config: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        EmailProcessor().validate(config)
    assert info.value.key == key


def test_bad_config_at_run_time_does_not_raise(smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    execution = _execution()
    assert EmailProcessor(smtp_server.settings()).process(execution, {"emails": "nope"}) == execution
    assert "invalid email config" in caplog.text
    assert smtp_server.messages == []


# -- registration ----------------------------------------------------------------------------------


def test_registers_with_the_agent_settings(smtp_server: SmtpServer) -> None:
    host = IsolatedPluginHost(settings=smtp_server.settings())
    info = host.register(plugin, "email")
    assert info.error == "" and info.processors == ["email"]
    processor = host.processors.get("email")
    config = processor.validate({"emails": "ops@example.test"})
    assert processor.process(_execution(), config)["output"] == placeholder(1)
    assert len(smtp_server.wait_for_messages()) == 1


def test_plugin_loads_through_entry_point() -> None:
    from dkron.plugins import load_plugins

    host = load_plugins({"mail-host": "smtp.example.test"})
    assert host.infos["email"].error == ""
    assert host.infos["email"].processors == ["email"]
    processor = host.processors.get("email")
    assert isinstance(processor, EmailProcessor)
    assert processor.settings["mail-host"] == "smtp.example.test"
