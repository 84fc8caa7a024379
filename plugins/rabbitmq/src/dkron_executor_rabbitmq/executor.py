"""The ``rabbitmq`` executor: publishes one message per run, like Dkron's rabbitmq executor.

Unlike Dkron's, the publish uses publisher confirms and ``mandatory``: a run succeeds only once
the broker has confirmed the message, and a message that no queue receives (unroutable) fails
the run. The AMQP exchange runs in a helper thread so that the executor can give up at the
``timeout`` or as soon as the run is cancelled, even while pika is blocked in a socket call.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pika
import pika.exceptions
from pika.adapters.utils.connection_workflow import AMQPConnectorException, AMQPConnectorStackTimeout

from dkron.contracts import CancelToken, ConfigError, ExecutionRequest, ExecutionResult, OutputSink
from dkron_executor_rabbitmq.config import RabbitConfig, parse_config, validate_config

log = logging.getLogger(__name__)

__all__ = ["RabbitMQExecutor", "describe_error"]

# pika logs every connection at INFO and every failure at ERROR with a traceback, although the
# run's one-line error already says what went wrong. Keep it quiet unless the agent's logging
# configuration has chosen a level for it.
if logging.getLogger("pika").level == logging.NOTSET:
    logging.getLogger("pika").setLevel(logging.CRITICAL)

#: How often ``execute`` looks at the cancel token while the publish is in progress.
_POLL = 0.05
#: Extra time given to pika to report its own (more precise) error once the timeout passed.
_GRACE = 0.5


def _innermost(exc: BaseException) -> BaseException:
    """pika nests the real cause in ``args[0]`` or ``.exception`` (sometimes several levels deep)."""
    for _ in range(10):
        inner = getattr(exc, "exception", None)
        if not isinstance(inner, BaseException) and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _broker_reason(exc: BaseException) -> str:
    """``403 ACCESS_REFUSED - ...`` out of pika's ``"ConnectionClosedByBroker: (403) '...'"``."""
    text = _one_line(str(_innermost(exc)))
    match = re.search(r"\((\d+)\) ['\"](.*)['\"]\Z", text)
    return f"{match.group(1)} {match.group(2)}" if match else text


def describe_error(exc: BaseException, cfg: RabbitConfig) -> str:
    """A one-line reason for ``exc`` (never the password)."""
    where = cfg.safe_url
    if isinstance(exc, pika.exceptions.UnroutableError):
        returned = exc.messages[0].method if exc.messages else None
        reason = f"{returned.reply_code} {returned.reply_text}" if returned else "returned"
        return (
            f"message is unroutable ({reason}): exchange {cfg.exchange!r} has no queue bound "
            f"for routing key {cfg.queue!r}"
        )
    if isinstance(exc, pika.exceptions.NackError):
        return "the broker rejected the message (publisher confirm: nack)"
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return f"the broker refused: {exc.reply_code} {_one_line(exc.reply_text)}"
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return f"authentication failed at {where}: {_broker_reason(exc)}"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return f"access to the virtual host denied at {where}: {_broker_reason(exc)}"
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker):
        return f"the broker closed the connection: {exc.reply_code} {_one_line(exc.reply_text)}"
    # pika raises some connector errors unwrapped; OSError is e.g. a DNS failure.
    if isinstance(exc, pika.exceptions.AMQPConnectionError | AMQPConnectorException | OSError):
        inner = _innermost(exc)
        if isinstance(inner, AMQPConnectorStackTimeout):
            return f"cannot connect to {where}: no AMQP handshake within {cfg.timeout:g}s"
        if isinstance(inner, OSError) and inner.strerror:
            detail = inner.strerror
        else:
            detail = _one_line(str(inner) or type(inner).__name__)
        return f"cannot connect to {where}: {detail}"
    return _one_line(f"{type(exc).__name__}: {exc}")


@dataclass
class _Publish:
    """One publish attempt, run in its own thread; ``execute`` only reads its outcome."""

    cfg: RabbitConfig
    request: ExecutionRequest
    done: threading.Event = field(default_factory=threading.Event)
    #: Guards ``abandoned`` and ``published``: either the publish starts or it is abandoned.
    gate: threading.Lock = field(default_factory=threading.Lock)
    #: Set by ``execute`` when it stops waiting: the message must then no longer be sent.
    abandoned: bool = False
    published: bool = False
    lines: list[str] = field(default_factory=list)
    error: str = ""

    def parameters(self) -> pika.URLParameters:
        params = pika.URLParameters(self.cfg.url)
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = self.cfg.timeout
        params.stack_timeout = self.cfg.timeout
        params.blocked_connection_timeout = self.cfg.timeout
        props = dict(params.client_properties or {})
        props["connection_name"] = f"dkron job={self.request.job_name} execution={self.request.execution_id}"
        params.client_properties = props
        return params

    def properties(self) -> pika.BasicProperties:
        headers = {"x-dkron-job": self.request.job_name, "x-dkron-run-id": self.request.run_id}
        if self.request.execution_id:
            headers["x-dkron-execution-id"] = self.request.execution_id
        return pika.BasicProperties(
            content_type=self.cfg.content_type,
            delivery_mode=self.cfg.delivery_mode,
            message_id=self.cfg.message_id,
            timestamp=int(time.time()),
            headers=headers,
        )

    def run(self) -> None:
        connection = None
        try:
            connection = pika.BlockingConnection(self.parameters())
            channel = connection.channel()
            channel.confirm_delivery()
            cfg = self.cfg
            if cfg.create_queue:
                declared = channel.queue_declare(
                    cfg.queue, durable=cfg.durable, auto_delete=cfg.auto_delete, exclusive=cfg.exclusive
                )
                self.lines.append(
                    f"declared queue {cfg.queue!r} (durable={cfg.durable}, auto_delete={cfg.auto_delete}, "
                    f"exclusive={cfg.exclusive}); {declared.method.message_count} message(s) were waiting"
                )
            with self.gate:
                if self.abandoned:
                    return
                self.published = True
            channel.basic_publish(cfg.exchange, cfg.queue, cfg.body, self.properties(), mandatory=True)
            exchange = repr(cfg.exchange) + (" (the default exchange)" if cfg.exchange == "" else "")
            self.lines.append(
                f"published {len(cfg.body)} bytes to exchange {exchange} with routing key {cfg.queue!r} "
                f"at {cfg.safe_url}"
            )
            self.lines.append("the broker confirmed the message (publisher confirm: ack)")
        except Exception as exc:
            self.error = describe_error(exc, self.cfg)
        finally:
            if connection is not None and connection.is_open:
                try:
                    connection.close()
                except Exception:  # the outcome is already known; closing is best effort
                    log.debug("rabbitmq: closing the connection failed", exc_info=True)
            self.done.set()


class RabbitMQExecutor:
    """Stateless; one instance serves every execution on the agent concurrently."""

    #: The AMQP URL carries the user and password: shown as ******** by the API.
    secret_keys = frozenset({"url"})

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        return validate_config(config)

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        try:
            cfg = parse_config(request.config)
        except ConfigError as exc:  # the core normally validated already; report, never raise
            return ExecutionResult(success=False, error=f"rabbitmq: invalid config: {exc}")
        if cancel.cancelled:
            return ExecutionResult(success=False, error=f"rabbitmq: killed before publishing: {cancel.reason}")
        attempt = _Publish(cfg, request)
        worker = threading.Thread(
            target=attempt.run, name=f"rabbitmq-{request.execution_id or request.job_name}", daemon=True
        )
        worker.start()
        deadline = time.monotonic() + cfg.timeout + _GRACE
        while not attempt.done.wait(_POLL):
            if cancel.cancelled or time.monotonic() >= deadline:
                break
        with attempt.gate:
            finished = attempt.done.is_set()
            attempt.abandoned = not finished
            published = attempt.published
        for line in list(attempt.lines):
            output.write(line + "\n")
        if finished and not attempt.error:
            return ExecutionResult(success=True)
        if finished:
            return ExecutionResult(success=False, error=f"rabbitmq: {attempt.error}")
        maybe = " (the message may have been published)" if published else " (nothing was published)"
        if cancel.cancelled:
            return ExecutionResult(success=False, error=f"rabbitmq: killed: {cancel.reason}{maybe}")
        return ExecutionResult(
            success=False, error=f"rabbitmq: timed out after {cfg.timeout:g}s talking to {cfg.safe_url}{maybe}"
        )
