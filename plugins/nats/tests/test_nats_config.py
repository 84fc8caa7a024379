"""Validation of executor_config at submission: every error names the key to fix."""

from __future__ import annotations

import pytest

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest
from dkron_executor_nats import NatsExecutor
from dkron_executor_nats.config import Server, parse_config, parse_servers, parse_timeout

OK = {"url": "nats://127.0.0.1:4222", "subject": "jobs.done"}


@pytest.mark.parametrize(
    ("config", "key", "fragment"),
    [
        ({"subject": "a"}, "url", "url is required"),
        ({"url": " , ", "subject": "a"}, "url", "url is required"),
        ({"url": "http://h:1", "subject": "a"}, "url", "nats:// or tls://"),
        ({"url": "ws://h:1", "subject": "a"}, "url", "nats:// or tls://"),
        ({"url": "nats://:4222", "subject": "a"}, "url", "no host"),
        ({"url": "nats://h:99999", "subject": "a"}, "url", "not a valid URL"),
        ({"url": "nats://h:0", "subject": "a"}, "url", "1-65535"),
        ({"url": "nats://h:x", "subject": "a"}, "url", "not a valid URL"),
        ({"url": "nats://h:1/path", "subject": "a"}, "url", "scheme://"),
        ({"url": "nats://h:1,http://h:2", "subject": "a"}, "url", "http://h:2"),
        ({"url": "nats://h"}, "subject", "subject is required"),
        ({**OK, "subject": "  "}, "subject", "subject is required"),
        ({**OK, "subject": "a b"}, "subject", "spaces"),
        ({**OK, "subject": "a\tb"}, "subject", "spaces"),
        ({**OK, "subject": "a..b"}, "subject", "empty token"),
        ({**OK, "subject": ".a"}, "subject", "empty token"),
        ({**OK, "subject": "a."}, "subject", "empty token"),
        ({**OK, "subject": "a.*"}, "subject", "wildcards"),
        ({**OK, "subject": "a.>"}, "subject", "wildcards"),
        ({**OK, "password": "x"}, "userName", "userName is required"),
        ({**OK, "userName": "u", "password": "p", "token": "t"}, "token", "cannot be combined"),
        ({**OK, "userName": "u", "password": "p\r\nPUB x 1"}, "password", "line breaks"),
        ({**OK, "token": "t\n"}, "token", "line breaks"),
        ({**OK, "timeout": "abc"}, "timeout", "seconds or a duration"),
        ({**OK, "timeout": "0"}, "timeout", "greater than zero"),
        ({**OK, "timeout": "0s"}, "timeout", "greater than zero"),
        ({**OK, "timeout": "-1"}, "timeout", "seconds or a duration"),
        ({**OK, "timeout": "10 s"}, "timeout", "seconds or a duration"),
        ({**OK, "debug": "yes"}, "debug", "true or false"),
        ({**OK, "tlsRootCAsFile": "ca.pem"}, "tlsRootCAsFile", "absolute path"),
        ({**OK, "subjet": "typo"}, "subjet", "unknown key"),
        ({**OK, "message": 5}, "message", "must be a string"),
    ],
)
def test_invalid_config_names_the_key(config: dict[str, str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        NatsExecutor().validate(config)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_validate_normalises_lightly() -> None:
    config = {
        "url": " nats://a:1 ,nats://b:2 ",
        "subject": " jobs.done ",
        "message": "  keep spaces  ",
        "userName": "u",
        "password": " p ",
        "timeout": " 1m30s ",
        "debug": "1",
    }
    assert NatsExecutor().validate(config) == {
        "url": "nats://a:1 ,nats://b:2",
        "subject": "jobs.done",
        "message": "  keep spaces  ",
        "userName": "u",
        "password": " p ",
        "timeout": "1m30s",
        "debug": "true",
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("2.5", 2.5), (".5", 0.5), ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0)],
)
def test_timeout_is_seconds_or_a_go_duration(text: str, seconds: float) -> None:
    assert parse_timeout(text) == pytest.approx(seconds)


def test_defaults() -> None:
    cfg = parse_config(OK)
    assert (cfg.timeout, cfg.debug, cfg.payload, cfg.user, cfg.token, cfg.ca_file) == (10.0, False, b"", "", "", None)


def test_message_is_sent_as_utf8() -> None:
    assert parse_config({**OK, "message": "héllo €"}).payload == "héllo €".encode()


def test_servers_default_port_credentials_and_ipv6() -> None:
    servers = parse_servers("nats://h, tls://u%40x:p%3Aw@h2:4333,TOKEN@[::1]:5, h3:7")
    assert servers == (
        Server("nats", "h", 4222),
        Server("tls", "h2", 4333, user="u@x", password="p:w"),
        Server("nats", "::1", 5, token="TOKEN"),
        Server("nats", "h3", 7),
    )
    assert servers[2].address == "nats://[::1]:5"
    assert servers[1].address == "tls://h2:4333"  # never the credentials


def test_bad_config_at_run_time_fails_without_raising() -> None:
    request = ExecutionRequest(job_name="j", run_id="r", config={"url": "nats://h"})
    result = NatsExecutor().execute(request, _NullSink(), CancelToken())
    assert not result.success
    assert result.error == "nats: invalid config: subject is required"


def test_cancelled_before_start_does_nothing() -> None:
    cancel = CancelToken()
    cancel.cancel("shutdown")
    request = ExecutionRequest(job_name="j", run_id="r", config=OK)
    result = NatsExecutor().execute(request, _NullSink(), cancel)
    assert (result.success, result.error) == (False, "nats: killed: shutdown")


def test_registered_through_the_hook() -> None:
    from dkron.contracts import ExecutorRegistry
    from dkron_executor_nats import dkron_register_executors

    registry = ExecutorRegistry()
    dkron_register_executors(registry)
    assert isinstance(registry.get("nats"), NatsExecutor)


class _NullSink:
    def write(self, chunk: bytes | str) -> None:
        pass
