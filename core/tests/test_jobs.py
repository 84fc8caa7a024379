"""``validate_job``: what a submitted job must look like, and what the server makes of it.

Uses the real installed plugins (shell executor, log processor) through ``load_plugins()``.
"""

from __future__ import annotations

from typing import Any

import pytest

from dkron.jobs import COMPUTED_FIELDS, MAX_NAME_LENGTH, JobValidationError, validate_job
from dkron.plugins import load_plugins

HOST = load_plugins()


def validate(**fields: Any) -> dict[str, Any]:
    payload = {
        "name": "job",
        "schedule": "@every 1m",
        "executor": "shell",
        "executor_config": {"command": "true"},
        **fields,
    }
    payload = {k: v for k, v in payload.items() if v is not ...}
    return validate_job(payload, executors=HOST.executors, processors=HOST.processors)


def rejected(**fields: Any) -> JobValidationError:
    with pytest.raises(JobValidationError) as info:
        validate(**fields)
    return info.value


def test_the_installed_plugins_are_the_real_ones():
    assert "shell" in HOST.executors.names()
    assert "log" in HOST.processors.names()


def test_a_minimal_job_gets_every_default():
    job = validate_job(
        {"name": "minimal", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "date"}},
        executors=HOST.executors,
        processors=HOST.processors,
    )
    assert job == {
        "name": "minimal",
        "displayname": "",
        "timezone": "",
        "schedule": "@manually",
        "owner": "",
        "owner_email": "",
        "disabled": False,
        "tags": {},
        "metadata": {},
        "retries": 0,
        "parent_job": "",
        "processors": {},
        "concurrency": "allow",
        "catchup": "latest",
        "executor": "shell",
        "executor_config": {"command": "date"},
        "ephemeral": False,
        "starts_at": None,
        "expires_at": None,
    }


def test_null_means_default_for_optional_fields():
    job = validate(
        displayname=None, timezone=None, tags=None, metadata=None, retries=None, concurrency=None, disabled=None
    )
    assert (job["displayname"], job["timezone"], job["tags"], job["metadata"]) == ("", "", {}, {})
    assert (job["retries"], job["concurrency"], job["disabled"]) == (0, "allow", False)


# -- name ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["a", "job-1", "under_score", "0digits", "abcßñëäïüøüáéíóýćàèìòùâêîôûæšłç", "кириллица", "x" * MAX_NAME_LENGTH],
)
def test_names_of_lower_case_letters_of_any_script_digits_dash_underscore_are_valid(name):
    assert validate(name=name)["name"] == name


@pytest.mark.parametrize(
    ("name", "char"),
    [("BAD JOB NAME!", "'B'"), ("bad job", "' '"), ("bad!", "'!'"), ("a.b", "'.'"), ("a/b", "'/'"), ("Ω", "'Ω'")],
)
def test_an_illegal_character_is_named(name, char):
    err = rejected(name=name)
    assert err.field == "name" and err.status == 400
    assert "illegal character" in str(err) and char in str(err)


def test_the_first_illegal_character_is_the_one_named():
    assert "'B'" in str(rejected(name="BAD JOB NAME!"))
    assert "' '" in str(rejected(name="bad JOB"))


@pytest.mark.parametrize("name", ["", None, ...])
def test_an_empty_or_missing_name_is_rejected(name):
    err = rejected(name=name)
    assert err.field == "name" and "name cannot be empty" in str(err)


def test_a_non_string_name_is_rejected():
    assert rejected(name=5).field == "name"


def test_a_name_longer_than_the_limit_is_rejected_with_the_limit():
    err = rejected(name="x" * (MAX_NAME_LENGTH + 1))
    assert err.field == "name" and str(MAX_NAME_LENGTH) in str(err)


# -- unknown and computed fields -----------------------------------------------------------------
def test_the_legacy_top_level_command_is_rejected_and_points_to_executor_config():
    err = rejected(command="date")
    assert err.field == "command"
    assert "unknown field" in str(err) and "command" in str(err) and "executor_config" in str(err)


def test_every_unknown_field_is_listed():
    err = rejected(shell=True, environment_variables=["A=1"])
    assert "environment_variables" in str(err) and "shell" in str(err)


def test_a_typo_of_a_field_is_rejected():
    assert rejected(schedul="@every 1m").field == "schedul"


def test_computed_fields_are_accepted_and_ignored():
    computed = {
        "id": "other",
        "success_count": 7,
        "error_count": 3,
        "skipped_count": 1,
        "missed_count": 2,
        "last_success": "2024-01-01T00:00:00Z",
        "last_error": None,
        "status": "success",
        "next": "2030-01-01T00:00:00Z",
        "dependent_jobs": ["child"],
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "garbage of any type is fine",
        "running": True,
    }
    assert set(computed) <= COMPUTED_FIELDS
    job = validate(**computed)
    assert not set(computed) & set(job)
    assert job == validate()


# -- types -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("displayname", 5),
        ("schedule", ["@every 1m"]),
        ("timezone", 1),
        ("owner", {"a": 1}),
        ("owner_email", True),
        ("disabled", "true"),
        ("ephemeral", 1),
        ("tags", ["a"]),
        ("metadata", "k=v"),
        ("executor_config", "command=date"),
        ("processors", ["log"]),
        ("retries", "3"),
        ("retries", 1.5),
        ("retries", True),
        ("starts_at", 1700000000),
        ("concurrency", 1),
        ("executor", 1),
    ],
)
def test_a_wrong_type_names_the_field(field, value):
    err = rejected(**{field: value})
    assert err.field == field and err.status == 400
    assert field in str(err)


def test_a_body_that_is_not_an_object_is_rejected():
    for payload in ([], "job", 5, None):
        with pytest.raises(JobValidationError, match="JSON object"):
            validate_job(payload, executors=HOST.executors, processors=HOST.processors)


# -- executor and executor_config -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"), [(True, "true"), (False, "false"), (5, "5"), (1.5, "1.5"), (None, ""), ("x", "x")]
)
def test_non_string_config_values_are_stored_as_their_text(value, text):
    job = validate(metadata={"k": value})
    assert job["metadata"] == {"k": text}


def test_executor_config_booleans_and_numbers_become_strings_the_executor_accepts():
    job = validate(executor_config={"command": "date", "shell": True, "timeout": "5s", "success_codes": 0})
    assert job["executor_config"] == {"command": "date", "shell": "true", "timeout": "5s", "success_codes": "0"}
    assert all(isinstance(v, str) for v in job["executor_config"].values())


def test_a_missing_executor_is_rejected():
    err = rejected(executor=...)
    assert err.field == "executor" and "required" in str(err)


def test_an_unknown_executor_is_rejected_with_the_installed_list():
    err = rejected(executor="no-such-executor")
    assert err.field == "executor"
    assert "'no-such-executor'" in str(err)
    assert str(err).endswith(f"(installed: {', '.join(HOST.executors.names())})") and "shell" in str(err)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"command": "date", "timeout": "soon"}, "timeout"),
        ({"command": "date", "mem_limit": "lots"}, "mem_limit"),
        ({"command": "date", "shell": "maybe"}, "shell"),
        ({"command": "date", "comand": "x"}, "comand"),
        ({"command": "date", "payload": "%%%"}, "payload"),
        ({"command": "date", "su": "root"}, "su"),
        ({"shell": "true"}, "command"),
        ({}, "command"),
    ],
)
def test_a_bad_executor_config_names_the_key(config, key):
    err = rejected(executor_config=config)
    assert err.field == f"executor_config.{key}"
    assert str(err).startswith(f"executor_config.{key}:")


def test_empty_config_keys_are_rejected():
    assert rejected(executor_config={"": "x", "command": "date"}).field == "executor_config"


# -- processors ------------------------------------------------------------------------------------
def test_a_known_processor_config_is_validated_and_normalised():
    assert validate(processors={"log": {"forward": True}})["processors"] == {"log": {"forward": "true"}}
    assert validate(processors={"log": None})["processors"] == {"log": {}}


def test_an_unknown_processor_is_rejected_with_the_installed_list():
    err = rejected(processors={"no-such-processor": {}})
    assert err.field == "processors.no-such-processor"
    assert "'no-such-processor'" in str(err) and str(err).endswith(f"(installed: {', '.join(HOST.processors.names())})")


def test_a_bad_processor_config_names_the_key():
    err = rejected(processors={"log": {"fwd": "true"}})
    assert err.field == "processors.log.fwd"


# -- tags ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["web", "web:1", "web:3", "a:b", "", "x:y:2"])
def test_tags_with_or_without_a_positive_cardinality_are_valid(value):
    assert validate(tags={"role": value})["tags"] == {"role": value}


@pytest.mark.parametrize("value", ["web:0", "web:-1", "web:00"])
def test_a_cardinality_below_one_is_rejected(value):
    err = rejected(tags={"role": value})
    assert err.field == "tags.role" and "cardinality" in str(err) and value in str(err)


# -- starts_at / expires_at ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("2030-01-02T03:04:05Z", "2030-01-02T03:04:05.000Z"),
        ("2030-01-02T03:04:05.123456+02:00", "2030-01-02T01:04:05.123Z"),
        ("2030-01-02T03:04", "2030-01-02T03:04:00.000Z"),
        ("", None),
        (None, None),
    ],
)
def test_start_and_expiry_accept_rfc3339_and_datetime_local_and_are_stored_in_utc(value, stored):
    assert validate(starts_at=value)["starts_at"] == stored
    assert validate(expires_at=value)["expires_at"] == stored


@pytest.mark.parametrize("field", ["starts_at", "expires_at"])
def test_an_unparseable_time_names_the_field_and_the_expected_form(field):
    err = rejected(**{field: "next tuesday"})
    assert err.field == field and "RFC 3339" in str(err) and "next tuesday" in str(err)


def test_starts_at_must_be_before_expires_at():
    err = rejected(starts_at="2030-01-02T00:00:00Z", expires_at="2030-01-01T00:00:00Z")
    assert err.field == "starts_at" and "before expires_at" in str(err)
    assert rejected(starts_at="2030-01-01T00:00:00Z", expires_at="2030-01-01T00:00:00Z").field == "starts_at"
    assert validate(starts_at="2030-01-01T00:00:00Z", expires_at="2030-01-01T00:00:01Z")["expires_at"]


# -- retries, concurrency, timezone, schedule, parent -----------------------------------------------
@pytest.mark.parametrize("value", [0, 1, 100])
def test_retries_within_bounds_are_kept(value):
    assert validate(retries=value)["retries"] == value


@pytest.mark.parametrize(("value", "text"), [(-1, ">= 0"), (101, "at most 100")])
def test_retries_out_of_bounds_are_rejected_with_the_bound(value, text):
    err = rejected(retries=value)
    assert err.field == "retries" and text in str(err)


@pytest.mark.parametrize(("value", "stored"), [("allow", "allow"), ("forbid", "forbid"), ("", "allow")])
def test_concurrency_policies(value, stored):
    assert validate(concurrency=value)["concurrency"] == stored


@pytest.mark.parametrize("value", ["deny", "Forbid", "parallel"])
def test_an_unknown_concurrency_policy_lists_the_valid_ones(value):
    err = rejected(concurrency=value)
    assert err.field == "concurrency" and "allow" in str(err) and "forbid" in str(err) and repr(value) in str(err)


@pytest.mark.parametrize("zone", ["Europe/Madrid", "America/New_York", "UTC", ""])
def test_known_time_zones_are_accepted(zone):
    assert validate(timezone=zone, schedule="0 0 12 * * *")["timezone"] == zone


@pytest.mark.parametrize("zone", ["notatimezone", "Mars/Olympus", "../../etc/passwd"])
def test_an_unknown_time_zone_is_rejected(zone):
    err = rejected(timezone=zone)
    assert err.field == "timezone" and "unknown time zone" in str(err) and zone in str(err)


@pytest.mark.parametrize(
    "spec", ["0 30 2 * * *", "30 2 * * *", "@every 10s", "@manually", "@daily", "TZ=Europe/Madrid 0 0 9 * * *"]
)
def test_valid_schedules(spec):
    assert validate(schedule=spec)["schedule"] == spec


@pytest.mark.parametrize("spec", ["61 * * * * *", "every minute", "@every 0s", "@sometimes", "* * *"])
def test_a_bad_schedule_is_rejected_with_the_parser_reason(spec):
    err = rejected(schedule=spec)
    assert err.field == "schedule" and str(err).startswith("can't parse job schedule: ")


def test_the_schedule_is_trimmed():
    assert validate(schedule="  @every 1m ")["schedule"] == "@every 1m"


@pytest.mark.parametrize("spec", ["", None, ...])
def test_an_empty_schedule_needs_a_parent(spec):
    err = rejected(schedule=spec)
    assert err.field == "schedule" and "empty" in str(err)
    assert validate(schedule=spec, parent_job="parent")["schedule"] == ""


def test_a_child_may_still_have_a_schedule_but_it_must_parse():
    assert validate(schedule="@every 1m", parent_job="parent")["parent_job"] == "parent"
    assert rejected(schedule="nope", parent_job="parent").field == "schedule"


def test_a_job_cannot_be_its_own_parent():
    err = rejected(name="loop", parent_job="loop")
    assert err.field == "parent_job" and "itself as parent" in str(err)


def test_the_parent_name_follows_the_name_rule():
    err = rejected(parent_job="Bad Parent")
    assert err.field == "parent_job" and "illegal character" in str(err)


@pytest.mark.parametrize(("field", "limit"), [("displayname", 500), ("owner", 500), ("owner_email", 500)])
def test_text_fields_have_a_length_limit(field, limit):
    assert validate(**{field: "x" * limit})[field] == "x" * limit
    err = rejected(**{field: "x" * (limit + 1)})
    assert err.field == field and str(limit) in str(err)


@pytest.mark.parametrize("policy", ["latest", "none", "all"])
def test_catchup_policies_are_accepted(policy):
    assert validate(catchup=policy)["catchup"] == policy


def test_an_unknown_catchup_policy_names_the_field():
    err = rejected(catchup="sometimes")
    assert err.field == "catchup" and "latest, none, all" in str(err)
