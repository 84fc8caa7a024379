"""Secret keys declared by executors, and how jobs are redacted and restored."""

from __future__ import annotations

import pytest

from dkron.contracts import ExecutionResult, ExecutorRegistry, RegistrationError
from dkron.redact import REDACTED, PlaceholderError, diff_jobs, keep_stored_secrets, redact_job, secret_values


class Plain:
    def validate(self, config):
        return dict(config)

    def execute(self, request, output, cancel):
        return ExecutionResult(True)


class Declares(Plain):
    secret_keys = frozenset({"password"})


@pytest.fixture
def executors() -> ExecutorRegistry:
    registry = ExecutorRegistry()
    registry.add("plain", Plain)
    registry.add("declares", Declares)
    registry.add("explicit", Plain, secret_keys=["token", "env"])
    return registry


def test_secret_keys_come_from_the_attribute_or_the_argument(executors):
    assert executors.secret_keys("plain") == frozenset()
    assert executors.secret_keys("declares") == {"password"}
    assert executors.secret_keys("explicit") == {"token", "env"}
    assert executors.secret_keys("unknown") == frozenset()
    with pytest.raises(RegistrationError):
        executors.add("bad", Plain, secret_keys="token")  # a string is not a collection of names


def test_redaction_replaces_only_non_empty_secret_values(executors):
    job = {"name": "j", "executor": "declares", "executor_config": {"password": "hunter22", "user": "u"}}
    shown = redact_job(job, executors)
    assert shown["executor_config"] == {"password": REDACTED, "user": "u"}
    assert job["executor_config"]["password"] == "hunter22"  # the stored job is untouched
    empty = {"name": "j", "executor": "declares", "executor_config": {"password": ""}}
    assert redact_job(empty, executors)["executor_config"]["password"] == ""


def test_the_placeholder_keeps_the_stored_value_of_the_same_executor(executors):
    stored = {"name": "j", "executor": "declares", "executor_config": {"password": "hunter22"}}
    sent = {"name": "j", "executor": "declares", "executor_config": {"password": REDACTED, "user": "v"}}
    keep_stored_secrets(sent, stored, executors)
    assert sent["executor_config"]["password"] == "hunter22"
    other = {"name": "j", "executor": "explicit", "executor_config": {"token": REDACTED}}
    with pytest.raises(PlaceholderError):
        keep_stored_secrets(other, stored, executors)  # another executor: nothing to keep


def test_secret_values_include_the_values_inside_env_forms(executors):
    job = {"executor": "explicit", "executor_config": {"env": "A=first-secret,B=second-secret", "token": "x"}}
    assert secret_values(job, executors) == {"A=first-secret,B=second-secret", "first-secret", "second-secret"}
    job["executor_config"]["env"] = '{"A": "json-secret"}'
    assert "json-secret" in secret_values(job, executors)


def test_the_diff_covers_the_submitted_fields_only():
    old = {"name": "j", "schedule": "@daily", "success_count": 3}
    new = {"name": "j", "schedule": "@hourly"}
    assert diff_jobs(old, new) == {"schedule": ["@daily", "@hourly"]}
    assert diff_jobs(None, new) == {}
