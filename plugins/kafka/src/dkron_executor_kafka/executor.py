"""The ``kafka`` executor: produces ``message`` to ``topic`` and waits for the broker's acknowledgement."""

from __future__ import annotations

import json
from collections.abc import Mapping

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult, OutputSink
from dkron.pluginkit import guarded_execute
from dkron_executor_kafka.client import ProduceFailed, produce_once
from dkron_executor_kafka.config import KafkaConfig, parse_config, validate_config

__all__ = ["KafkaExecutor", "describe"]


def describe(cfg: KafkaConfig) -> str:
    """The config as shown by ``debug`` (the password is never shown)."""
    security = ("TLS" if cfg.tls else "plaintext") + (f" + SASL {cfg.sasl_mechanism}" if cfg.sasl_mechanism else "")
    return (
        f"brokers={','.join(cfg.brokers)} topic={cfg.topic} key={_key_text(cfg)} bytes={len(cfg.message)} "
        f"security={security} timeout={cfg.timeout:g}s"
    )


def _key_text(cfg: KafkaConfig) -> str:
    if cfg.key is None:
        return "none"
    return json.dumps(cfg.key.decode("utf-8", "surrogateescape"), ensure_ascii=False)


class KafkaExecutor:
    """Stateless (a producer per execution), so one instance serves every execution concurrently."""

    #: Shown as ******** by the API, the audit log and notifications.
    secret_keys = frozenset({"saslPassword"})

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        return validate_config(config)

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        return guarded_execute("kafka", request, cancel, parse_config, lambda cfg: self._produce(cfg, output, cancel))

    def _produce(self, cfg: KafkaConfig, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        debug = (lambda line: output.write(line)) if cfg.debug else None
        if debug is not None:
            debug(f"kafka: {describe(cfg)}\n")
        try:
            delivery = produce_once(cfg, cancel, debug)
        except ProduceFailed as exc:
            return ExecutionResult(success=False, error=f"kafka: {exc}")
        key = f"with key {_key_text(cfg)}" if cfg.key is not None else "without key"
        output.write(
            f"produced {len(cfg.message)} bytes {key} to topic {delivery.topic}, "
            f"partition {delivery.partition}, offset {delivery.offset}\n"
        )
        return ExecutionResult(success=True)
