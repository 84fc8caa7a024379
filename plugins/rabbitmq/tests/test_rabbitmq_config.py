"""Validation of the rabbitmq executor's config: every error names its key. No broker needed."""

from __future__ import annotations

import pytest

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest
from dkron_executor_rabbitmq import RabbitMQExecutor
from dkron_executor_rabbitmq.config import parse_config, redact_url

BASE = {"url": "amqp://guest:guest@127.0.0.1:5672/", "queue.name": "jobs"}


def validate(**extra: str) -> dict[str, str]:
    return RabbitMQExecutor().validate({**BASE, **extra})


def test_minimal_config_gets_dkron_defaults() -> None:
    assert validate() == {**BASE, "exchange": "", "message.content_type": "text/plain"}
    cfg = parse_config(BASE)
    assert (cfg.exchange, cfg.content_type, cfg.delivery_mode, cfg.message_id, cfg.body) == (
        "",
        "text/plain",
        None,
        None,
        b"",
    )
    assert not (cfg.create_queue or cfg.durable or cfg.auto_delete or cfg.exclusive)
    assert cfg.timeout == 30.0


def test_full_config_is_normalised() -> None:
    config = validate(
        **{
            "exchange": "amq.direct",
            "queue.create": "1",
            "queue.durable": "True",
            "queue.auto_delete": "F",
            "queue.exclusive": "false",
            "message.content_type": "application/json",
            "message.delivery_mode": "2",
            "message.messageId": "m-1",
            "message.body": '{"a": 1}',
            "timeout": "1m30s",
        }
    )
    assert config["queue.create"] == "true" and config["queue.durable"] == "true"
    assert config["queue.auto_delete"] == "false" and config["queue.exclusive"] == "false"
    cfg = parse_config(config)
    assert cfg.timeout == 90.0 and cfg.delivery_mode == 2 and cfg.body == b'{"a": 1}'
    assert validate(**config) == config  # idempotent: the stored form validates to itself


@pytest.mark.parametrize(
    ("value", "declare"), [("true", True), ("1", True), ("false", False), ("0", False), ("", False)]
)
def test_queue_create_declares_only_when_true(value: str, declare: bool) -> None:
    assert parse_config({**BASE, "queue.create": value}).create_queue is declare


def test_base64_body_and_the_docs_alias() -> None:
    assert parse_config({**BASE, "message.base64Body": "aGk="}).body == b"hi"
    config = validate(**{"message.base64": "AAH/"})
    assert config["message.base64Body"] == "AAH/" and "message.base64" not in config
    assert parse_config(config).body == b"\x00\x01\xff"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"queue.name": "jobs"}, "url"),
        ({**BASE, "url": "http://localhost/"}, "url"),
        ({**BASE, "url": "amqp://localhost:notaport/"}, "url"),
        ({"url": BASE["url"]}, "queue.name"),
        ({**BASE, "queue.name": " "}, "queue.name"),
        ({**BASE, "queue.name": "q" * 256}, "queue.name"),
        ({**BASE, "exchange": "x" * 256}, "exchange"),
        ({**BASE, "queue.create": "yes"}, "queue.create"),
        ({**BASE, "queue.durable": "maybe"}, "queue.durable"),
        ({**BASE, "queue.auto_delete": "2"}, "queue.auto_delete"),
        ({**BASE, "queue.exclusive": "on"}, "queue.exclusive"),
        ({**BASE, "message.delivery_mode": "3"}, "message.delivery_mode"),
        ({**BASE, "message.delivery_mode": "persistent"}, "message.delivery_mode"),
        ({**BASE, "message.messageId": "i" * 256}, "message.messageId"),
        ({**BASE, "message.body": "a", "message.base64Body": "YQ=="}, "message.base64Body"),
        ({**BASE, "message.body": "a", "message.base64": "YQ=="}, "message.base64"),
        ({**BASE, "message.base64Body": "YQ==", "message.base64": "YQ=="}, "message.base64"),
        ({**BASE, "message.base64Body": "not base64!"}, "message.base64Body"),
        ({**BASE, "message.base64": "YQ="}, "message.base64"),
        ({**BASE, "timeout": "0s"}, "timeout"),
        ({**BASE, "timeout": "soon"}, "timeout"),
        ({**BASE, "timeout": "2h"}, "timeout"),
        ({**BASE, "queue_name": "typo"}, "queue_name"),
    ],
)
def test_every_error_names_its_key(config: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RabbitMQExecutor().validate(config)
    assert info.value.key == key
    assert key in str(info.value)


def test_tls_files_are_not_read_at_validation() -> None:
    """The CA and client certificate live on the agents; the server validating the job may lack them."""
    url = "amqps://u:p@broker/?ssl_options={'ca_certs':'/only/on/agents/ca.pem'}&heartbeat=10"
    assert RabbitMQExecutor().validate({**BASE, "url": url})["url"] == url
    with pytest.raises(ConfigError) as info:
        RabbitMQExecutor().validate({**BASE, "url": "amqps://broker/?ssl_options=[1]"})
    assert info.value.key == "url"


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RabbitMQExecutor().validate({**BASE, "url": "amqp://bob:s3cret@host:notaport/"})
    assert "s3cret" not in str(info.value) and "bob:***@host" in str(info.value)
    assert redact_url("amqps://u:p@h:5671/v?x=1") == "amqps://u:***@h:5671/v?x=1"
    assert "s3cret" not in repr(parse_config({**BASE, "url": "amqp://bob:s3cret@host/"}))


@pytest.mark.parametrize(("raw", "seconds"), [("5", 5.0), ("2.5", 2.5), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0)])
def test_timeout_accepts_go_durations_and_seconds(raw: str, seconds: float) -> None:
    assert parse_config({**BASE, "timeout": raw}).timeout == seconds


def test_invalid_stored_config_fails_the_run_instead_of_raising() -> None:
    request = ExecutionRequest(job_name="j", run_id="j@1", config={"queue.name": "q"})
    result = RabbitMQExecutor().execute(request, _NullSink(), CancelToken())
    assert not result.success and result.error.startswith("rabbitmq: invalid config: url is required")


def test_already_cancelled_run_does_not_connect() -> None:
    cancel = CancelToken()
    cancel.cancel("agent stopping")
    request = ExecutionRequest(job_name="j", run_id="j@1", config=BASE)
    result = RabbitMQExecutor().execute(request, _NullSink(), cancel)
    assert not result.success and "killed before publishing: agent stopping" in result.error


def test_plugin_loads_through_entry_point() -> None:
    from dkron.plugins import load_plugins

    host = load_plugins()
    assert "rabbitmq" in host.executors
    assert host.infos["rabbitmq"].error == ""
    assert host.infos["rabbitmq"].distribution == "dkron-executor-rabbitmq"


class _NullSink:
    def write(self, chunk: bytes | str) -> None:
        pass
