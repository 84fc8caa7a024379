"""Secret config values: redacted wherever a job leaves the server, kept on an edit round trip.

Executor plugins declare which of their config keys are secret (``secret_keys``, see
``dkron.contracts``). Jobs are stored with the real values (the executor needs them); every
copy shown to a user (API responses, the audit log's diffs, notifications) carries
:data:`REDACTED` instead. A job sent back with :data:`REDACTED` for a secret key keeps the stored
value, so "GET, edit, PUT" does not wipe credentials.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from dkron.contracts import ExecutorRegistry

REDACTED = "********"
#: Values shorter than this are not worth scanning for (the suite-wide leak check would match
#: them by chance in unrelated text).
MIN_SCANNED_SECRET = 6
MIN_MASKED_SECRET = 4


def secret_keys(job: Mapping[str, Any], executors: ExecutorRegistry) -> frozenset[str]:
    return executors.secret_keys(str(job.get("executor") or ""))


def redact_job(job: dict[str, Any], executors: ExecutorRegistry) -> dict[str, Any]:
    """A copy of ``job`` with its secret config values replaced by :data:`REDACTED`."""
    keys = secret_keys(job, executors)
    config = job.get("executor_config")
    if not keys or not isinstance(config, dict) or not keys.intersection(config):
        return job
    shown = {k: (REDACTED if k in keys and v not in ("", None) else v) for k, v in config.items()}
    return {**job, "executor_config": shown}


class PlaceholderError(ValueError):
    """A secret was sent as the placeholder but there is no stored value to keep."""


def keep_stored_secrets(payload: Any, stored: Mapping[str, Any] | None, executors: ExecutorRegistry) -> None:
    """Replace :data:`REDACTED` values of secret keys in ``payload`` with the stored ones (in place)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("executor_config"), dict):
        return
    keys = secret_keys(payload, executors)
    config = payload["executor_config"]
    stored_config: Mapping[str, Any] = {}
    if stored is not None and stored.get("executor") == payload.get("executor"):
        stored_config = stored.get("executor_config") or {}
    for key in keys:
        if config.get(key) == REDACTED:
            if key not in stored_config:
                raise PlaceholderError(
                    f"executor_config.{key} is the redacted placeholder {REDACTED!r} but the job has no stored "
                    "value to keep; send the real value"
                )
            config[key] = stored_config[key]


def secret_values(
    job: Mapping[str, Any], executors: ExecutorRegistry, min_length: int = MIN_SCANNED_SECRET
) -> set[str]:
    """The secret values of ``job`` (each at least ``min_length`` characters long)."""
    config = job.get("executor_config") or {}
    values = set()
    for key in secret_keys(job, executors):
        value = config.get(key)
        if not isinstance(value, str) or value == REDACTED:
            continue
        values.add(value)
        values.update(_parts(value))  # e.g. each value of shell's secret_env
    return {value for value in values if len(value) >= min_length}


def output_masks(job: Mapping[str, Any], executors: ExecutorRegistry) -> tuple[bytes, ...]:
    """What to mask in the job's output: a job that prints a secret does not publish it.

    Longest first (a secret containing another is masked whole). Values shorter than
    :data:`MIN_MASKED_SECRET` are left alone: masking ``"abc"`` would garble ordinary output."""
    if not secret_keys(job, executors).intersection(job.get("executor_config") or {}):
        return ()  # the common case, once per run: no secret to look for
    values = secret_values(job, executors, min_length=MIN_MASKED_SECRET)
    return tuple(sorted((value.encode("utf-8", "surrogatepass") for value in values), key=len, reverse=True))


def _parts(value: str) -> list[str]:
    """The values inside a ``{"K": "v"}`` or ``K=v,K2=v2`` secret (the forms of ``env``)."""
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return [v for v in parsed.values() if isinstance(v, str)]
    return [piece.partition("=")[2] for piece in value.split(",") if "=" in piece]


def diff_jobs(old: Mapping[str, Any] | None, new: Mapping[str, Any], hidden: Iterable[str] = ()) -> dict[str, Any]:
    """Fields of ``new`` that changed, as ``{field: [old, new]}`` (both already redacted by the caller).

    Only ``new``'s fields count: the stored job also has computed ones (counters, status)."""
    skip = set(hidden)
    if old is None:
        return {}
    changes = {}
    for key in sorted(new):
        if key in skip or key.startswith("_"):
            continue
        if old.get(key) != new.get(key):
            changes[key] = [old.get(key), new.get(key)]
    return changes
