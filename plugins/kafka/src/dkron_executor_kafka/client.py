"""Mapping of a :class:`KafkaConfig` to librdkafka settings, and one acknowledged produce.

``client_config`` is pure (unit-tested for every TLS/SASL combination). ``produce_once`` creates a
producer, produces one message with ``acks=all`` and serves delivery reports in slices of at most
:data:`SLICE` seconds until the broker acknowledged it, the timeout passed, a fatal error was
reported, or the execution was cancelled. The producer is always purged and closed before it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from dkron.contracts import CancelToken
from dkron_executor_kafka.config import KafkaConfig

__all__ = ["SLICE", "Delivery", "ProduceFailed", "client_config", "produce_once"]

log = logging.getLogger(__name__)

#: Longest wait, in seconds, between checks of the cancel token and the deadline.
SLICE = 0.1
CLIENT_ID = "dkron-executor-kafka"
#: Errors after which waiting longer cannot help: fail the run at once (most specific first).
_FAIL_FAST = {
    KafkaError._AUTHENTICATION: "authentication failed",
    KafkaError.SASL_AUTHENTICATION_FAILED: "authentication failed",
    KafkaError._SSL: "TLS error",
    KafkaError._INVALID_ARG: "invalid client configuration",
    KafkaError._ALL_BROKERS_DOWN: "all brokers are down",
}


@dataclass(frozen=True)
class Delivery:
    topic: str
    partition: int
    offset: int


class ProduceFailed(Exception):
    """A one-line reason the message was not acknowledged."""


def client_config(cfg: KafkaConfig) -> dict[str, Any]:
    """librdkafka properties for one acknowledged produce (no callbacks)."""
    timeout_ms = max(1, int(cfg.timeout * 1000))
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(cfg.brokers),
        "client.id": CLIENT_ID,
        "acks": "all",
        # Java's default partitioner: a keyed message lands where a Java producer would put it.
        "partitioner": "murmur2_random",
        # The whole produce (connect, metadata, retries, acknowledgement) must fit in the timeout.
        "message.timeout.ms": timeout_ms,
        # One broker: never give up on the connection before the timeout itself. Several: leave
        # time to try the others when one does not answer (refused connections fail at once).
        "socket.connection.setup.timeout.ms": (
            timeout_ms + 1000 if len(cfg.brokers) == 1 else max(1000, min(timeout_ms // len(cfg.brokers), 30000))
        ),
        # A topic missing from metadata fails after this long instead of librdkafka's 30 s.
        "topic.metadata.propagation.max.ms": min(timeout_ms, 5000),
        "linger.ms": 0,
        "enable.idempotence": False,
    }
    if cfg.tls and cfg.sasl_mechanism:
        conf["security.protocol"] = "SASL_SSL"
    elif cfg.tls:
        conf["security.protocol"] = "SSL"
    elif cfg.sasl_mechanism:
        conf["security.protocol"] = "SASL_PLAINTEXT"
    else:
        conf["security.protocol"] = "PLAINTEXT"
    if cfg.tls:
        if cfg.ca_file:
            conf["ssl.ca.location"] = cfg.ca_file
        if cfg.tls_insecure:
            conf["enable.ssl.certificate.verification"] = False
            conf["ssl.endpoint.identification.algorithm"] = "none"
        else:
            conf["ssl.endpoint.identification.algorithm"] = "https"
    if cfg.sasl_mechanism:
        conf["sasl.mechanism"] = cfg.sasl_mechanism
        conf["sasl.username"] = cfg.sasl_username
        conf["sasl.password"] = cfg.sasl_password
    if cfg.debug:
        conf["debug"] = "broker,topic,msg,security"
    return conf


class _LogAdapter:
    """Receives librdkafka's log lines (served by poll()): to our logger, and to the output when debugging.

    confluent-kafka calls ``log(python_level, line)`` with lines like
    ``FAIL [rdkafka#producer-1] [thrd:host:9092/bootstrap]: host:9092/bootstrap: Disconnected ...``.
    Connection failures (facility ``FAIL``) and warnings are also kept in ``problems``: librdkafka
    often explains a failure (a dropped connection, a TLS alert) only in its log.
    """

    def __init__(self, write: Callable[[str], None] | None, problems: list[str]) -> None:
        self.write = write
        self.problems = problems

    def log(self, level: int, fmt: str, *args: Any) -> None:
        line = fmt % args if args else fmt
        if level >= logging.WARNING or line.startswith("FAIL "):
            self.problems.append(line.split("]: ", 1)[1] if "]: " in line else line)
        log.debug("librdkafka: %s", line)
        if self.write is not None:
            self.write(f"kafka: {line}\n")


def _reason(err: KafkaError) -> str:
    return str(err.str()) or str(err.name())


class _Attempt:
    """What the callbacks (all run inside ``poll()``, on the calling thread) reported so far."""

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []
        self.problems: list[str] = []  # readable reasons, newest last
        self.results: list[tuple[KafkaError | None, Any]] = []

    def on_error(self, err: KafkaError) -> None:
        self.errors.append(err)
        if err.code() != KafkaError._ALL_BROKERS_DOWN:
            self.problems.append(_reason(err))

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        self.results.append((err, msg))

    def last_problem(self) -> str:
        return self.problems[-1] if self.problems else ""


def produce_once(cfg: KafkaConfig, cancel: CancelToken, debug: Callable[[str], None] | None) -> Delivery:
    """Produce one message and wait for its acknowledgement; raise :class:`ProduceFailed` otherwise."""
    if cfg.ca_file is not None:
        try:  # librdkafka's own message for this names neither the key nor the file
            with open(cfg.ca_file, "rb"):
                pass
        except OSError as exc:
            raise ProduceFailed(f"cannot read tlsRootCAsFile {cfg.ca_file}: {exc.strerror}") from None
    attempt = _Attempt()
    conf = client_config(cfg)
    conf["error_cb"] = attempt.on_error
    conf["logger"] = _LogAdapter(debug, attempt.problems)
    try:
        producer = Producer(conf)
    except KafkaException as exc:
        raise ProduceFailed(f"cannot create the producer: {_reason(exc.args[0])}") from None
    try:
        return _produce(producer, cfg, cancel, attempt)
    finally:
        producer.purge()
        producer.poll(0)
        producer.close()


def _produce(producer: Producer, cfg: KafkaConfig, cancel: CancelToken, attempt: _Attempt) -> Delivery:
    # librdkafka checks message.timeout.ms only about once a second: keep the deadline ourselves.
    deadline = time.monotonic() + cfg.timeout
    try:
        producer.produce(cfg.topic, value=cfg.message, key=cfg.key, on_delivery=attempt.on_delivery)
    except (KafkaException, BufferError) as exc:
        detail = _reason(exc.args[0]) if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
        raise ProduceFailed(f"cannot produce: {detail}") from None
    seen = 0
    while not attempt.results:
        producer.poll(SLICE)
        if any(err.fatal() or err.code() in _FAIL_FAST for err in attempt.errors[seen:]):
            producer.poll(0)  # the specific error (TLS, SASL) may come just after "all brokers are down"
            raise ProduceFailed(_fail_fast_text(attempt.errors[seen:], attempt))
        seen = len(attempt.errors)
        if attempt.results:
            break
        if cancel.cancelled:
            raise ProduceFailed(f"killed before the broker acknowledged the message: {cancel.reason}")
        if time.monotonic() >= deadline:
            raise ProduceFailed(_timeout_text(cfg, attempt))
    err, msg = attempt.results[0]
    if err is None:
        return Delivery(msg.topic(), msg.partition(), msg.offset())
    code = err.code()
    if code == KafkaError._MSG_TIMED_OUT:
        raise ProduceFailed(_timeout_text(cfg, attempt))
    if code in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise ProduceFailed(f"topic {cfg.topic} does not exist (and the broker did not create it)")
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        raise ProduceFailed(f"not authorized to write to topic {cfg.topic}")
    raise ProduceFailed(f"the broker rejected the message: {_reason(err)}")


def _fail_fast_text(errors: list[KafkaError], attempt: _Attempt) -> str:
    """The most specific label among ``errors``, and the newest readable reason."""
    fatal = [err for err in errors if err.fatal()]
    codes = {err.code() for err in errors}
    label = next((_FAIL_FAST[code] for code in _FAIL_FAST if code in codes), "fatal error")
    detail = attempt.last_problem() or _reason((fatal or errors)[-1])
    if fatal:
        label = "fatal error"
    elif label == _FAIL_FAST[KafkaError._ALL_BROKERS_DOWN]:
        # The connection failure itself may only say why in its text.
        if any(mark in detail for mark in ("SSL", "certificate verify failed")):
            label = "TLS error"
        elif "SASL" in detail:
            label = "authentication failed"
    return f"{label}: {detail}"


def _timeout_text(cfg: KafkaConfig, attempt: _Attempt) -> str:
    text = f"timeout {cfg.timeout:g}s exceeded before the broker acknowledged the message"
    last = attempt.last_problem()
    return f"{text} (last error: {last})" if last else text
