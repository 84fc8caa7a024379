"""Bad input against a real agent: every mistake gets a 4xx JSON error that says what to fix,
and nothing is written (the stored jobs are byte-for-byte the same afterwards).

Never a 500, never a stack trace in the body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dkron.testing import AgentProcess, HttpResult

SEED = [
    {"name": "root", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "true"}},
    {"name": "mid", "parent_job": "root", "executor": "shell", "executor_config": {"command": "true"}},
    {"name": "leaf", "parent_job": "mid", "executor": "shell", "executor_config": {"command": "true"}},
    {"name": "plain", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "true"}},
]
GOOD = {"name": "good", "schedule": "@every 1h", "executor": "shell", "executor_config": {"command": "date"}}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    node = AgentProcess(tmp_path_factory.mktemp("validation") / "data").start()
    try:
        for job in SEED:
            res = node.post("/v1/jobs", job)
            assert res.status == 201, res
        yield node
    finally:
        node.stop(timeout=15)


@pytest.fixture(autouse=True)
def nothing_written(agent: AgentProcess) -> Iterator[None]:
    """Every test here sends bad input: the stored jobs must be exactly the same afterwards."""
    before = agent.get("/v1/jobs")
    yield
    after = agent.get("/v1/jobs")
    assert after.headers["X-Total-Count"] == before.headers["X-Total-Count"] == str(len(SEED))
    assert after.json() == before.json(), "a rejected request changed the stored jobs"


def rejected(res: HttpResult, status: int, *needles: str) -> dict[str, Any]:
    """Assert a clean JSON error with ``status`` whose message contains every needle."""
    assert res.status == status, res
    assert res.headers["Content-Type"].startswith("application/json"), res.headers
    assert res.headers.get("X-Whom") == "node1"
    body = res.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert set(body) <= {"error", "field"}, body
    for needle in needles:
        assert needle in body["error"], f"{needle!r} not in {body['error']!r}"
    assert "Traceback" not in res.body.decode("utf-8", "replace")
    return body


# -- the body --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_malformed_json_says_where(agent, method):
    res = agent.request(method, "/v1/jobs", raw=b'{"name": "good",\n "schedule": }')
    rejected(res, 400, "malformed JSON", "line 2 column")


@pytest.mark.parametrize("raw", [b"", b"  \n "])
def test_an_empty_body_asks_for_a_json_object(agent, raw):
    rejected(agent.request("POST", "/v1/jobs", raw=raw), 400, "empty", "JSON object")


@pytest.mark.parametrize("body", [[GOOD], "good", 5, None, True])
def test_a_body_that_is_not_an_object_is_rejected(agent, body):
    res = agent.request("POST", "/v1/jobs", raw=json.dumps(body).encode())
    rejected(res, 400, "JSON object")


def test_a_body_that_is_not_utf8_is_rejected(agent):
    rejected(agent.request("POST", "/v1/jobs", raw=b'{"name": "\xff\xfe"}'), 400, "UTF-8")


def test_json_nested_too_deeply_is_a_400_not_a_crash(agent):
    rejected(agent.request("POST", "/v1/jobs", raw=b"[" * 100_000 + b"]" * 100_000), 400)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("disabled", "yes", "disabled must be true or false"),
        ("retries", "3", "retries must be a whole number"),
        ("retries", -1, "retries must be a whole number >= 0"),
        ("retries", 1000, "retries must be at most 100"),
        ("tags", ["web"], "tags must be an object"),
        ("executor_config", "command=date", "executor_config must be an object"),
        ("schedule", 5, "schedule must be a string"),
        ("starts_at", 1700000000, "starts_at must be an RFC 3339 time"),
        ("concurrency", "sometimes", "invalid concurrency policy 'sometimes'"),
    ],
)
def test_a_wrong_field_type_or_value_names_the_field(agent, field, value, needle):
    body = rejected(agent.post("/v1/jobs", {**GOOD, field: value}), 400, "job validation failed", needle)
    assert body["field"] == field


@pytest.mark.parametrize(
    ("schedule", "needle"),
    [("61 * * * * *", "61"), ("every day", "every day"), ("@every 10ms", "1s minimum"), ("", "empty")],
)
def test_a_bad_schedule_says_why(agent, schedule, needle):
    body = rejected(agent.post("/v1/jobs", {**GOOD, "schedule": schedule}), 400, "can't parse job schedule", needle)
    assert body["field"] == "schedule"


def test_an_unknown_timezone_is_named(agent):
    body = rejected(agent.post("/v1/jobs", {**GOOD, "timezone": "Mars/Olympus"}), 400, "unknown time zone")
    assert "Mars/Olympus" in body["error"] and body["field"] == "timezone"


def test_an_unknown_executor_lists_the_installed_ones(agent):
    res = agent.post("/v1/jobs", {**GOOD, "executor": "no-such-executor"})
    body = rejected(res, 400, "unknown executor 'no-such-executor'", "installed: ")
    installed = body["error"].split("installed: ")[1].rstrip(")").split(", ")
    assert "shell" in installed and body["field"] == "executor"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"command": "date", "timeout": "soon"}, "timeout"),
        ({"command": "date", "mem_limit": "lots"}, "mem_limit"),
        ({"command": "date", "comand": "typo"}, "comand"),
        ({"shell": "true"}, "command"),
    ],
)
def test_a_bad_executor_config_names_the_key(agent, config, key):
    body = rejected(agent.post("/v1/jobs", {**GOOD, "executor_config": config}), 400, f"executor_config.{key}")
    assert body["field"] == f"executor_config.{key}"


def test_an_unknown_processor_is_rejected(agent):
    res = agent.post("/v1/jobs", {**GOOD, "processors": {"no-such-processor": {}}})
    body = rejected(res, 400, "unknown processor 'no-such-processor'", "log")
    assert body["field"] == "processors.no-such-processor"


def test_the_legacy_top_level_command_is_rejected_not_dropped(agent):
    res = agent.post("/v1/jobs", {"name": "legacy", "schedule": "@every 1m", "executor": "shell", "command": "date"})
    body = rejected(res, 400, "unknown field(s): command", "executor_config")
    assert body["field"] == "command"


@pytest.mark.parametrize(("name", "char"), [("BAD JOB NAME!", "'B'"), ("bad name", "' '"), ("a.b", "'.'")])
def test_an_illegal_name_character_is_named(agent, name, char):
    body = rejected(agent.post("/v1/jobs", {**GOOD, "name": name}), 400, "illegal character", char)
    assert body["field"] == "name"


def test_a_missing_name_is_rejected(agent):
    body = rejected(agent.post("/v1/jobs", {k: v for k, v in GOOD.items() if k != "name"}), 400, "name cannot be empty")
    assert body["field"] == "name"


def test_starts_at_after_expires_at_is_rejected(agent):
    job = {**GOOD, "starts_at": "2030-01-02T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}
    rejected(agent.post("/v1/jobs", job), 400, "starts_at must be before expires_at")


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/jobs"), ("PATCH", "/v1/jobs"), ("PUT", "/v1/jobs/good"), ("POST", "/v1/restore")]
)
def test_a_body_over_one_mib_is_a_413(agent, method, path):
    padding = "x" * (1024 * 1024)
    raw = json.dumps({**GOOD, "displayname": padding}).encode()
    rejected(agent.request(method, path, raw=raw), 413, "too large", "1048576")


# -- jobs that do not exist, routes that do not exist, methods that are not allowed ----------------
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/ghost"),
        ("DELETE", "/v1/jobs/ghost"),
        ("POST", "/v1/jobs/ghost"),
        ("POST", "/v1/jobs/ghost/run"),
        ("POST", "/v1/jobs/ghost/toggle"),
        ("GET", "/v1/jobs/ghost/executions"),
        ("DELETE", "/v1/jobs/ghost/executions"),
        ("GET", "/v1/jobs/ghost/executions/123-node1"),
        ("POST", "/v1/jobs/ghost/executions/123-node1/kill"),
    ],
)
def test_an_unknown_job_is_a_404_on_every_path(agent, method, path):
    rejected(agent.request(method, path), 404, "job not found: ghost")


@pytest.mark.parametrize(
    ("method", "path", "needle"),
    [
        ("GET", "/v1/jobs/plain/executions/123-node1", "execution not found: 123-node1"),
        ("POST", "/v1/jobs/plain/executions/123-node1/kill", "is not running"),
    ],
)
def test_an_unknown_execution_of_a_known_job_is_a_404(agent, method, path, needle):
    rejected(agent.request(method, path), 404, needle)


@pytest.mark.parametrize("path", ["/v2/jobs", "/v1/nope", "/v1/jobs/plain/nope", "/v1/jobs/", "/favicon.ico"])
def test_an_unknown_route_is_a_json_404(agent, path):
    rejected(agent.get(path), 404, f"not found: {path}")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/v1/jobs", {"GET", "HEAD", "OPTIONS", "POST", "PATCH"}),
        ("PUT", "/v1/busy", {"GET", "HEAD", "OPTIONS"}),
        ("GET", "/v1/restore", {"POST", "OPTIONS"}),
        ("GET", "/v1/jobs/plain/run", {"POST", "OPTIONS"}),
        ("PATCH", "/v1/jobs/plain", {"GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE"}),
        ("GET", "/v1/leave", {"POST", "OPTIONS"}),
    ],
)
def test_a_wrong_method_is_a_json_405_with_allow(agent, method, path, allowed):
    rejected(agent.request(method, path), 405, f"method {method} is not allowed on {path}")
    assert set(agent.request(method, path).headers["Allow"].split(", ")) == allowed


# -- query parameters ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("_start=abc", "_start must be a whole number, got 'abc'"),
        ("_end=1.5", "_end must be a whole number"),
        ("_start=1_0", "_start must be a whole number"),
        ("_start=-1", "_start must be >= 0"),
        ("_start=5&_end=2", "_end >= _start"),
        ("_start=99999999999999999999", "_start must be at most"),
        ("_sort=nope", "_sort must be one of"),
        ("_order=sideways", "_order must be ASC or DESC"),
        ("disabled=maybe", "disabled must be true or false, got 'maybe'"),
        ("status=weird", "status must be one of success, failed, untriggered"),
    ],
)
def test_a_bad_job_list_query_is_a_400(agent, query, needle):
    rejected(agent.get(f"/v1/jobs?{query}"), 400, needle)


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("_sort=nope", "_sort must be one of attempt, finished_at, id, started_at"),
        ("_order=up", "_order must be ASC or DESC"),
        ("_start=x", "_start must be a whole number"),
        ("output_size_limit=big", "output_size_limit must be a whole number"),
    ],
)
def test_a_bad_execution_list_query_is_a_400(agent, query, needle):
    rejected(agent.get(f"/v1/jobs/plain/executions?{query}"), 400, needle)


# -- relations between jobs ------------------------------------------------------------------------
def test_a_parent_that_does_not_exist_is_a_404(agent):
    child = {"name": "orphan", "parent_job": "nobody", "executor": "shell", "executor_config": {"command": "true"}}
    rejected(agent.post("/v1/jobs", child), 404, "parent job not found: nobody")


def test_a_job_cannot_be_its_own_parent(agent):
    body = rejected(agent.post("/v1/jobs", {**GOOD, "parent_job": "good"}), 400, "itself as parent")
    assert body["field"] == "parent_job"


def test_a_dependency_cycle_is_a_400(agent):
    # root <- mid <- leaf; making root a child of leaf would close the loop.
    res = agent.request("PUT", "/v1/jobs/root", {**SEED[0], "parent_job": "leaf"})
    rejected(res, 400, "cycle", "leaf")
    res = agent.request("PUT", "/v1/jobs/root", {**SEED[0], "parent_job": "mid"})
    rejected(res, 400, "cycle")


def test_deleting_a_parent_with_children_is_a_409_naming_them(agent):
    rejected(agent.request("DELETE", "/v1/jobs/root"), 409, "dependent jobs", "mid")
    rejected(agent.request("DELETE", "/v1/jobs/mid"), 409, "leaf")


def test_put_with_a_body_name_differing_from_the_url_is_a_400(agent):
    res = agent.request("PUT", "/v1/jobs/plain", {**SEED[3], "name": "other"})
    rejected(res, 400, "'other'", "'plain'", "differs from the URL")


def test_put_to_an_illegal_url_name_is_a_400(agent):
    body = {k: v for k, v in GOOD.items() if k != "name"}
    rejected(agent.request("PUT", "/v1/jobs/Bad", body), 400, "illegal character 'B'")


# -- restore ---------------------------------------------------------------------------------------
def test_a_restore_with_one_invalid_job_writes_none_of_them(agent):
    backup = [{**GOOD, "name": "fine-one"}, {**GOOD, "name": "broken", "schedule": "nope"}]
    rejected(agent.post("/v1/restore", backup), 400, "job #1", "can't parse job schedule")


def test_a_restore_whose_parent_is_missing_writes_nothing(agent):
    backup = [{**GOOD, "name": "kid", "parent_job": "missing"}]
    rejected(agent.post("/v1/restore", backup), 400, "'missing'", "neither in the backup nor stored")


def test_a_restore_with_a_cycle_writes_nothing(agent):
    backup = [
        {**GOOD, "name": "cyc-a", "parent_job": "cyc-b"},
        {**GOOD, "name": "cyc-b", "parent_job": "cyc-a"},
    ]
    rejected(agent.post("/v1/restore", backup), 400, "dependency cycle")


def test_a_restore_with_a_duplicate_name_writes_nothing(agent):
    rejected(agent.post("/v1/restore", [GOOD, GOOD]), 400, "appears twice")


def test_a_restore_that_is_not_an_array_is_rejected(agent):
    rejected(agent.post("/v1/restore", GOOD), 400, "JSON array of jobs")


def multipart(field: str, content: bytes, boundary: str = "dkronboundary") -> tuple[bytes, dict[str, str]]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="backup.json"\r\n'
            f"Content-Type: application/json\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_multipart_restore_without_a_file_field_says_so(agent):
    raw, headers = multipart("backup", json.dumps([GOOD]).encode())
    rejected(agent.request("POST", "/v1/restore", raw=raw, headers=headers), 400, "form field named 'file'")


def test_a_multipart_restore_of_a_file_that_is_not_json_says_so(agent):
    raw, headers = multipart("file", b"this is not json")
    rejected(agent.request("POST", "/v1/restore", raw=raw, headers=headers), 400, "not valid JSON")
