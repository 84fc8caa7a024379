"""The job model: Dkron's JSON fields, validated and normalised before anything is stored.

``validate_job`` turns a client's JSON object into the stored form (user-settable fields only,
with defaults applied and scalars coerced) or raises :class:`JobValidationError` naming the
field to fix. Computed fields (counters, status, next, ...) are accepted on input, so a
``GET /v1/jobs`` backup can be posted back, but they are ignored: the store owns them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from dkron.config import ConfigError as DurationError
from dkron.config import parse_duration
from dkron.contracts import ConfigError, ExecutorRegistry, ProcessorRegistry
from dkron.schedule import ScheduleError, parse_schedule, validate_timezone

__all__ = [
    "COMPUTED_FIELDS",
    "JobValidationError",
    "format_time",
    "parse_time",
    "validate_job",
]

#: Fields the server computes; accepted on input (round trip of GET output) and ignored.
COMPUTED_FIELDS = frozenset(
    {
        "id",
        "success_count",
        "error_count",
        "last_success",
        "last_error",
        "status",
        "next",
        "dependent_jobs",
        "created_at",
        "updated_at",
        "missed_count",
        "skipped_count",
        "running",
    }
)
#: allow: runs may overlap; forbid: a tick while a run goes on is skipped (recorded);
#: replace: the running execution(s) are killed, then the new run starts.
CONCURRENCY_POLICIES = ("allow", "forbid", "replace")
#: When a child job runs after its parent's run: on success (Dkron's only behaviour), failure, or always.
DEPENDS_ON_STATUSES = ("success", "failure", "always")
#: What runs when scheduling resumes after ticks were missed (leader change, full outage).
CATCHUP_POLICIES = ("latest", "none", "all")
#: When post-run notifications are sent: every run, failed runs, or when the outcome changes.
NOTIFY_POLICIES = ("always", "failure", "change")
MAX_NAME_LENGTH = 200
MAX_RETRIES = 100
_TEXT_LIMITS = {"displayname": 500, "owner": 500, "owner_email": 500}
_TAG_COUNT = re.compile(r"^(?P<value>.*?)(?::(?P<count>-?\d+))?$")


class JobValidationError(ValueError):
    """A job is invalid. ``field`` names what to fix; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


# -- time helpers ------------------------------------------------------------------------------
def format_time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with millisecond precision: fixed width, so it also sorts as text."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_time(value: str) -> datetime:
    """RFC 3339, or Dkron's HTML ``datetime-local`` form ``YYYY-MM-DDTHH:MM`` (taken as UTC)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)  # raises ValueError with a usable message
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# -- field coercion --------------------------------------------------------------------------
def _scalar_to_str(value: Any, field: str, key: str) -> str:
    """Dkron rejects non-string config values; we accept them and store their text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    raise JobValidationError(f"{field}.{key} has an unsupported value type", f"{field}.{key}")


def _string_map(payload: Mapping[str, Any], field: str) -> dict[str, str]:
    value = payload.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobValidationError(f"{field} must be an object of string values", field)
    out: dict[str, str] = {}
    for key, item in value.items():
        if not key:
            raise JobValidationError(f"{field} keys cannot be empty", field)
        out[str(key)] = _scalar_to_str(item, field, key)
    return out


def _text(payload: Mapping[str, Any], field: str) -> str:
    value = payload.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise JobValidationError(f"{field} must be a string", field)
    limit = _TEXT_LIMITS.get(field)
    if limit and len(value) > limit:
        raise JobValidationError(f"{field} is longer than {limit} characters", field)
    return value


def _bool(payload: Mapping[str, Any], field: str) -> bool:
    value = payload.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise JobValidationError(f"{field} must be true or false", field)
    return value


def _optional_time(payload: Mapping[str, Any], field: str) -> str | None:
    value = payload.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise JobValidationError(f"{field} must be an RFC 3339 time string or null", field)
    try:
        return format_time(parse_time(value))
    except ValueError:
        raise JobValidationError(
            f"{field} is not a valid time: {value!r} (use RFC 3339, e.g. 2026-01-02T15:04:05Z)", field
        ) from None


def check_name(name: Any, field: str = "name") -> str:
    """Dkron's slug rule: lower-case letters (any script), ASCII digits, ``_`` and ``-``."""
    if not isinstance(name, str) or not name:
        raise JobValidationError(f"{field} cannot be empty", field)
    if len(name) > MAX_NAME_LENGTH:
        raise JobValidationError(f"{field} is longer than {MAX_NAME_LENGTH} characters", field)
    for char in name:
        if not ((char.isalpha() and char.islower()) or char in "0123456789_-"):
            raise JobValidationError(
                f"{field} contains illegal character {char!r}: use lower-case letters, digits, '_' and '-'",
                field,
            )
    return name


def _tags(payload: Mapping[str, Any]) -> dict[str, str]:
    tags = _string_map(payload, "tags")
    for key, value in tags.items():
        match = _TAG_COUNT.match(value)
        count = match.group("count") if match else None
        if count is not None and int(count) < 1:
            raise JobValidationError(
                f"tags.{key}: cardinality must be a whole number >= 1 (as in 'web:2'), got {value!r}",
                f"tags.{key}",
            )
    return tags


def _executor_config(payload: Mapping[str, Any], executor: str, executors: ExecutorRegistry) -> dict[str, str]:
    config = _string_map(payload, "executor_config")
    plugin = executors.get(executor)
    if plugin is None:
        installed = ", ".join(executors.names()) or "none"
        raise JobValidationError(
            f"unknown executor {executor!r}: it is not installed on this server (installed: {installed})",
            "executor",
        )
    try:
        return plugin.validate(config)
    except ConfigError as exc:
        key = f"executor_config.{exc.key}" if exc.key else "executor_config"
        raise JobValidationError(f"{key}: {exc}", key) from None


def _processors(payload: Mapping[str, Any], processors: ProcessorRegistry) -> dict[str, dict[str, str]]:
    value = payload.get("processors")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobValidationError("processors must be an object of processor name to config object", "processors")
    out: dict[str, dict[str, str]] = {}
    for name, config in value.items():
        field = f"processors.{name}"
        plugin = processors.get(name)
        if plugin is None:
            installed = ", ".join(processors.names()) or "none"
            raise JobValidationError(f"unknown processor {name!r} (installed: {installed})", field)
        raw = _string_map({field: config if config is not None else {}}, field)
        try:
            out[name] = plugin.validate(raw)
        except ConfigError as exc:
            key = f"{field}.{exc.key}" if exc.key else field
            raise JobValidationError(f"{key}: {exc}", key) from None
    return out


def _choice(payload: Mapping[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    """An enumerated string field; empty or absent means the first (default) value."""
    value = _text(payload, field) or allowed[0]
    if value not in allowed:
        raise JobValidationError(f"{field} must be one of {', '.join(allowed)}, got {value!r}", field)
    return value


def _retries(payload: Mapping[str, Any]) -> int:
    value = payload.get("retries", 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise JobValidationError("retries must be a whole number >= 0", "retries")
    if value > MAX_RETRIES:
        raise JobValidationError(f"retries must be at most {MAX_RETRIES}", "retries")
    return value


def _duration(payload: Mapping[str, Any], field: str, *, maximum_s: float) -> str:
    """An optional duration ("30s", "1m30s", "500ms", or a number of seconds), kept as given."""
    value = payload.get(field)
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise JobValidationError(f"{field} must be a duration such as 30s, 5m or 1h30m", field)
    text = str(value).strip()
    try:
        seconds = parse_duration(text, field)
    except DurationError:
        example = "examples: 500ms, 30s, 5m, 1h30m"
        raise JobValidationError(f"{field}: invalid duration {text!r} ({example})", field) from None
    if seconds > maximum_s:
        raise JobValidationError(f"{field} must be at most {maximum_s:g}s", field)
    return text


KNOWN_FIELDS = (
    frozenset(
        {
            "name",
            "displayname",
            "timezone",
            "schedule",
            "owner",
            "owner_email",
            "disabled",
            "tags",
            "metadata",
            "retries",
            "parent_job",
            "processors",
            "catchup",
            "concurrency",
            "executor",
            "executor_config",
            "ephemeral",
            "starts_at",
            "expires_at",
            "notify_on",
            "depends_on_status",
            "jitter",
            "retry_backoff",
            "retry_backoff_max",
        }
    )
    | COMPUTED_FIELDS
)


def validate_job(payload: Any, *, executors: ExecutorRegistry, processors: ProcessorRegistry) -> dict[str, Any]:
    """Validate a client's job object; return the stored (normalised) form."""
    if not isinstance(payload, dict):
        raise JobValidationError("the request body must be a JSON object describing a job")
    unknown = sorted(set(payload) - KNOWN_FIELDS)
    if unknown:
        # Dkron silently drops these (e.g. v1's top-level "command"), creating jobs that cannot run.
        raise JobValidationError(
            f"unknown field(s): {', '.join(unknown)}; executor settings go in executor_config", unknown[0]
        )
    name = check_name(payload.get("name"))
    parent = _text(payload, "parent_job")
    if parent:
        check_name(parent, "parent_job")
        if parent == name:
            raise JobValidationError("the job can not have itself as parent", "parent_job")
    timezone = _text(payload, "timezone")
    try:
        validate_timezone(timezone)
    except ScheduleError as exc:
        raise JobValidationError(f"timezone: {exc}", "timezone") from None
    schedule = _text(payload, "schedule").strip()
    if schedule or not parent:
        try:
            parse_schedule(schedule, timezone=timezone, job_name=name)
        except ScheduleError as exc:
            raise JobValidationError(f"can't parse job schedule: {exc}", "schedule") from None
    concurrency = _text(payload, "concurrency") or "allow"
    if concurrency not in CONCURRENCY_POLICIES:
        raise JobValidationError(
            f"invalid concurrency policy {concurrency!r}, use one of: {', '.join(CONCURRENCY_POLICIES)}",
            "concurrency",
        )
    executor = _text(payload, "executor")
    if not executor:
        raise JobValidationError('executor is required (for example "shell")', "executor")
    job = {
        "name": name,
        "displayname": _text(payload, "displayname"),
        "timezone": timezone,
        "schedule": schedule,
        "owner": _text(payload, "owner"),
        "owner_email": _text(payload, "owner_email"),
        "disabled": _bool(payload, "disabled"),
        "tags": _tags(payload),
        "metadata": _string_map(payload, "metadata"),
        "retries": _retries(payload),
        "parent_job": parent,
        "processors": _processors(payload, processors),
        "concurrency": concurrency,
        "catchup": _choice(payload, "catchup", CATCHUP_POLICIES),
        "notify_on": _choice(payload, "notify_on", NOTIFY_POLICIES),
        "executor": executor,
        "executor_config": _executor_config(payload, executor, executors),
        "ephemeral": _bool(payload, "ephemeral"),
        "starts_at": _optional_time(payload, "starts_at"),
        "expires_at": _optional_time(payload, "expires_at"),
        "depends_on_status": _choice(payload, "depends_on_status", DEPENDS_ON_STATUSES),
        "jitter": _duration(payload, "jitter", maximum_s=7 * 86400),
        "retry_backoff": _duration(payload, "retry_backoff", maximum_s=86400),
        "retry_backoff_max": _duration(payload, "retry_backoff_max", maximum_s=7 * 86400),
    }
    if job["depends_on_status"] != "success" and not parent:
        raise JobValidationError("depends_on_status only applies to a job with a parent_job", "depends_on_status")
    if job["starts_at"] and job["expires_at"] and job["starts_at"] >= job["expires_at"]:
        raise JobValidationError("starts_at must be before expires_at", "starts_at")
    return job
