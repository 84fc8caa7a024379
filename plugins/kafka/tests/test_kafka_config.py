"""Validation of executor_config at submission, and its mapping to librdkafka settings."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest, ExecutorRegistry
from dkron_executor_kafka import KafkaExecutor, dkron_register_executors
from dkron_executor_kafka.client import ProduceFailed, _Attempt, _produce, client_config
from dkron_executor_kafka.config import parse_brokers, parse_config, parse_timeout
from dkron_executor_kafka.executor import describe

OK = {"brokerAddress": "127.0.0.1:9092", "topic": "jobs"}
SASL = {"saslUsername": "svc", "saslPassword": "pw"}


@pytest.mark.parametrize(
    ("config", "key", "fragment"),
    [
        ({"topic": "t"}, "brokerAddress", "brokerAddress is required"),
        ({"brokerAddress": " , ", "topic": "t"}, "brokerAddress", "brokerAddress is required"),
        ({"brokerAddress": "localhost", "topic": "t"}, "brokerAddress", "not host:port"),
        ({"brokerAddress": "kafka://h:9092", "topic": "t"}, "brokerAddress", "not host:port"),
        ({"brokerAddress": "h:9092,h2", "topic": "t"}, "brokerAddress", "'h2'"),
        ({"brokerAddress": "h:0", "topic": "t"}, "brokerAddress", "1-65535"),
        ({"brokerAddress": "h:70000", "topic": "t"}, "brokerAddress", "1-65535"),
        ({"brokerAddress": "::1:9092", "topic": "t"}, "brokerAddress", "not host:port"),
        ({"brokerAddress": "h:1"}, "topic", "topic is required"),
        ({**OK, "topic": "a b"}, "topic", "A-Z a-z 0-9"),
        ({**OK, "topic": "a/b"}, "topic", "A-Z a-z 0-9"),
        ({**OK, "topic": ".."}, "topic", "not . or .."),
        ({**OK, "topic": "x" * 250}, "topic", "1-249"),
        ({**OK, "tlsEnable": "yes"}, "tlsEnable", "true or false"),
        ({**OK, "tlsInsecureSkipVerify": "true"}, "tlsInsecureSkipVerify", "needs tlsEnable"),
        ({**OK, "tlsInsecureSkipVerify": "maybe", "tlsEnable": "1"}, "tlsInsecureSkipVerify", "true or false"),
        ({**OK, "tlsRootCAsFile": "/etc/ca.pem"}, "tlsRootCAsFile", "needs tlsEnable"),
        ({**OK, "tlsEnable": "true", "tlsRootCAsFile": "ca.pem"}, "tlsRootCAsFile", "absolute path"),
        ({**OK, "saslPassword": "pw"}, "saslUsername", "saslUsername is required"),
        ({**OK, "saslMechanism": "plain"}, "saslUsername", "saslUsername is required"),
        ({**OK, "saslUsername": "svc"}, "saslPassword", "saslPassword is required"),
        ({**OK, **SASL}, "saslMechanism", "saslMechanism is required"),
        ({**OK, **SASL, "saslMechanism": "gssapi"}, "saslMechanism", "plain, sha256"),
        ({**OK, **SASL, "saslMechanism": "sha1"}, "saslMechanism", "plain, sha256"),
        ({**OK, "timeout": "soon"}, "timeout", "seconds or a duration"),
        ({**OK, "timeout": "0"}, "timeout", "greater than zero"),
        ({**OK, "timeout": "0ms"}, "timeout", "greater than zero"),
        ({**OK, "timeout": "48h"}, "timeout", "at most 24h"),
        ({**OK, "debug": "verbose"}, "debug", "true or false"),
        ({**OK, "partition": "1"}, "partition", "unknown key"),
        ({**OK, "key": 7}, "key", "must be a string"),
    ],
)
def test_invalid_config_names_the_key(config: dict[str, str], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        KafkaExecutor().validate(config)
    assert info.value.key == key
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("spelling", "mechanism"),
    [
        ("plain", "PLAIN"),
        ("PLAIN", "PLAIN"),
        ("sha256", "SCRAM-SHA-256"),
        ("SCRAM-SHA-256", "SCRAM-SHA-256"),
        ("scram_sha_256", "SCRAM-SHA-256"),
        ("sha512", "SCRAM-SHA-512"),
        ("scram-sha-512", "SCRAM-SHA-512"),
    ],
)
def test_sasl_mechanism_spellings(spelling: str, mechanism: str) -> None:
    assert parse_config({**OK, **SASL, "saslMechanism": spelling}).sasl_mechanism == mechanism


def test_validate_normalises_lightly() -> None:
    config = {
        "brokerAddress": " a:1, b:2 ",
        "topic": " jobs ",
        "key": " k ",
        "message": " m ",
        "tlsEnable": "1",
        "tlsInsecureSkipVerify": "F",
        "debug": "",
        "timeout": " 45s ",
    }
    assert KafkaExecutor().validate(config) == {
        "brokerAddress": "a:1, b:2",
        "topic": "jobs",
        "key": " k ",
        "message": " m ",
        "tlsEnable": "true",
        "tlsInsecureSkipVerify": "false",
        "debug": "false",
        "timeout": "45s",
    }


def test_brokers_and_timeouts() -> None:
    assert parse_brokers("a:1, [::1]:9092 ,kafka-0.kafka.svc:9093,") == ("a:1", "[::1]:9092", "kafka-0.kafka.svc:9093")
    assert [parse_timeout(t) for t in ("30", "2.5", "30s", "1m", "500ms")] == [30.0, 2.5, 30.0, 60.0, 0.5]
    cfg = parse_config(OK)
    assert (cfg.timeout, cfg.key, cfg.message, cfg.tls, cfg.sasl_mechanism, cfg.debug) == (
        30.0,
        None,
        b"",
        False,
        None,
        False,
    )


def test_plaintext_client_config() -> None:
    conf = client_config(parse_config({**OK, "brokerAddress": "a:1,b:2", "timeout": "2s"}))
    assert conf["bootstrap.servers"] == "a:1,b:2"
    assert conf["security.protocol"] == "PLAINTEXT"
    assert (conf["acks"], conf["partitioner"], conf["message.timeout.ms"]) == ("all", "murmur2_random", 2000)
    assert conf["topic.metadata.propagation.max.ms"] == 2000
    assert conf["socket.connection.setup.timeout.ms"] == 1000  # two brokers share the 2 s
    single = client_config(parse_config({**OK, "timeout": "2s"}))
    assert single["socket.connection.setup.timeout.ms"] == 3000  # the message timeout fires first
    assert not any(k.startswith(("ssl.", "sasl.")) for k in conf)
    assert "debug" not in conf


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"tlsEnable": "true"}, {"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "https"}),
        (
            {"tlsEnable": "true", "tlsRootCAsFile": "/etc/kafka/ca.pem"},
            {"security.protocol": "SSL", "ssl.ca.location": "/etc/kafka/ca.pem"},
        ),
        (
            {"tlsEnable": "true", "tlsInsecureSkipVerify": "true"},
            {
                "security.protocol": "SSL",
                "enable.ssl.certificate.verification": False,
                "ssl.endpoint.identification.algorithm": "none",
            },
        ),
        (
            {**SASL, "saslMechanism": "plain"},
            {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "svc"},
        ),
        (
            {**SASL, "saslMechanism": "sha256", "tlsEnable": "true"},
            {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256", "sasl.password": "pw"},
        ),
        (
            {**SASL, "saslMechanism": "sha512", "tlsEnable": "true"},
            {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"},
        ),
    ],
)
def test_tls_and_sasl_client_config(extra: dict[str, str], expected: dict[str, object]) -> None:
    conf = client_config(parse_config({**OK, **extra}))
    assert {k: conf.get(k) for k in expected} == expected


def test_client_config_is_accepted_by_librdkafka() -> None:
    """Every combination builds a real producer (librdkafka checks names and values)."""
    from confluent_kafka import Producer

    for extra in (
        {},
        {"tlsEnable": "true", "tlsInsecureSkipVerify": "true"},
        {**SASL, "saslMechanism": "sha512", "tlsEnable": "true", "debug": "true"},
        {**SASL, "saslMechanism": "plain"},
    ):
        Producer(client_config(parse_config({**OK, **extra}))).close()


def test_describe_never_shows_the_password() -> None:
    cfg = parse_config({**OK, **SASL, "saslMechanism": "sha256", "tlsEnable": "true", "key": "k1"})
    text = describe(cfg)
    assert "pw" not in text
    assert 'key="k1"' in text and "security=TLS + SASL SCRAM-SHA-256" in text


def test_bad_config_at_run_time_and_cancel_before_start() -> None:
    executor = KafkaExecutor()
    result = executor.execute(ExecutionRequest("j", "r", {"topic": "t"}), _NullSink(), CancelToken())
    assert result.error == "kafka: invalid config: brokerAddress is required"
    cancel = CancelToken()
    cancel.cancel("shutdown")
    result = executor.execute(ExecutionRequest("j", "r", OK), _NullSink(), cancel)
    assert result.error == "kafka: killed: shutdown"


def test_registered_through_the_hook() -> None:
    registry = ExecutorRegistry()
    dkron_register_executors(registry)
    assert isinstance(registry.get("kafka"), KafkaExecutor)


class _NullSink:
    def write(self, chunk: bytes | str) -> None:
        pass


class _StubProducer:
    """Stands in for confluent_kafka.Producer: delivers one preset report on the first poll()."""

    def __init__(self, report: KafkaError | None) -> None:
        self.report = report
        self.callback: Any = None

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Any) -> None:
        self.callback = on_delivery

    def poll(self, timeout: float) -> int:
        if self.callback is not None:
            self.callback(self.report, None)
            self.callback = None
        return 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (KafkaError.UNKNOWN_TOPIC_OR_PART, "topic jobs does not exist (and the broker did not create it)"),
        (KafkaError._UNKNOWN_TOPIC, "topic jobs does not exist (and the broker did not create it)"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "not authorized to write to topic jobs"),
        (KafkaError._MSG_TIMED_OUT, "timeout 30s exceeded before the broker acknowledged the message"),
        (KafkaError.MSG_SIZE_TOO_LARGE, "the broker rejected the message: "),
    ],
)
def test_delivery_errors_become_one_line_reasons(code: int, error: str) -> None:
    """Errors Tansu cannot produce (it auto-creates topics and has no ACLs), mapped without a broker."""
    with pytest.raises(ProduceFailed) as info:
        _produce(_StubProducer(KafkaError(code)), parse_config(OK), CancelToken(), _Attempt())  # type: ignore[arg-type]
    assert str(info.value).startswith(error)
