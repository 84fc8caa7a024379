"""The ``fluent`` processor: sends each execution to Fluentd or Fluent Bit, like Dkron's.

Where to send is the job's ``address`` or, as in Dkron, the agent's environment:
``FLUENTBIT_HOST`` and ``FLUENTBIT_PORT``. Dkron actually reads ``FLUENT_PORT`` for the port
(a bug), so that name is accepted too; ``FLUENTBIT_PORT`` wins when both are set. The tag is
the job's ``tag``, else ``FLUENTBIT_TAG``, else ``dkron``. The environment is read where the
processor runs (the node that ran the job), each time.

A failure to send never fails anything: it is logged as a warning and the execution is returned
unchanged (with its output, since the output did not reach Fluent).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from dkron import pluginkit
from dkron.contracts import ConfigError
from dkron.pluginkit import parse_forward
from dkron_processor_fluent.forward import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    TIMEOUT,
    Endpoint,
    encode_event,
    parse_endpoint,
    send,
)

__all__ = ["KNOWN_KEYS", "PLACEHOLDER", "FluentProcessor", "build_record", "endpoint_from", "parse_forward", "tag_from"]

log = logging.getLogger("dkron.processor.fluent")

#: What ``output`` becomes when ``forward`` is false (Dkron's exact text).
PLACEHOLDER = "Output sent to Fluent"
DEFAULT_TAG = "dkron"

#: Fluent tags are dot-separated words; no spaces or control characters.
_TAG = re.compile(r"[A-Za-z0-9_.\-:/@+]{1,256}\Z")

#: ``reporting_node`` is injected by Dkron into every processor's config: accept it.
KNOWN_KEYS = frozenset({"forward", "address", "tag", "reporting_node"})
_KNOWN_TEXT = f"the fluent processor knows {', '.join(sorted(KNOWN_KEYS - {'reporting_node'}))}"


def _check_tag(tag: str, key: str) -> str:
    if not _TAG.match(tag):
        raise ConfigError(f"{key} must be letters, digits and . _ - : / @ + (no spaces), got {tag!r}", key=key)
    return tag


def endpoint_from(config: Mapping[str, str], env: Mapping[str, str] | None = None) -> Endpoint:
    """The job's ``address``, else ``FLUENTBIT_HOST`` and ``FLUENTBIT_PORT``/``FLUENT_PORT``."""
    address = config.get("address", "").strip()
    if address:
        try:
            return parse_endpoint(address)
        except ValueError as exc:
            raise ConfigError(f"address: {exc}", key="address") from None
    env = os.environ if env is None else env
    host = env.get("FLUENTBIT_HOST", "").strip() or DEFAULT_HOST
    port_name = "FLUENTBIT_PORT" if env.get("FLUENTBIT_PORT", "").strip() else "FLUENT_PORT"
    port_text = env.get(port_name, "").strip()
    if not port_text:
        return Endpoint(host.strip("[]"), DEFAULT_PORT)
    try:
        return parse_endpoint(f"[{host.strip('[]')}]:{port_text}" if ":" in host else f"{host}:{port_text}")
    except ValueError as exc:
        raise ValueError(f"environment FLUENTBIT_HOST={host!r} {port_name}={port_text!r}: {exc}") from None


def tag_from(config: Mapping[str, str], env: Mapping[str, str] | None = None) -> str:
    tag = config.get("tag", "").strip()
    if tag:
        return _check_tag(tag, "tag")
    env = os.environ if env is None else env
    return _check_tag(env.get("FLUENTBIT_TAG", "").strip() or DEFAULT_TAG, "FLUENTBIT_TAG")


def _timestamp(execution: Mapping[str, Any]) -> float:
    """When the execution finished (Unix seconds), or now."""
    value = execution.get("finished_at")
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    return time.time()


def build_record(execution: Mapping[str, Any]) -> dict[str, Any]:
    output = execution.get("output") or ""
    if isinstance(output, bytes):
        output = output.decode("utf-8", errors="replace")
    return {
        "host": socket.gethostname(),
        "job_name": execution.get("job_name", ""),
        "execution_id": execution.get("id", ""),
        "success": bool(execution.get("success")),
        "message": output,
    }


class FluentProcessor:
    """Stateless; one instance serves every execution (one short-lived connection per event)."""

    #: Seconds allowed for connecting and sending (tests lower it).
    timeout = TIMEOUT

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        pluginkit.check_keys(config, KNOWN_KEYS, suggest=False, known=_KNOWN_TEXT)
        normalised = {key: str(value).strip() for key, value in config.items()}
        if "forward" in config:
            normalised["forward"] = "true" if parse_forward(config) else "false"
        if normalised.get("address"):
            endpoint_from(normalised, env={})
        if normalised.get("tag"):
            _check_tag(normalised["tag"], "tag")
        return normalised

    def process(self, execution: dict[str, Any], config: Mapping[str, str]) -> dict[str, Any]:
        endpoint: Endpoint | str = config.get("address", "") or "FLUENTBIT_HOST/FLUENTBIT_PORT"
        try:
            forward = parse_forward(config)
            endpoint = endpoint_from(config)
            data = encode_event(tag_from(config), _timestamp(execution), build_record(execution))
            send(endpoint, data, self.timeout)
        except Exception as exc:  # never fail or alter the execution because Fluent is unreachable
            log.warning(
                "fluent processor: could not send job %s execution %s to %s (output kept): %s",
                execution.get("job_name", ""),
                execution.get("id", ""),
                endpoint,
                exc,
            )
            return execution
        if forward:
            return execution
        return {**execution, "output": PLACEHOLDER}
