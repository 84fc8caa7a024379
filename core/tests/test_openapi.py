"""The OpenAPI document (``dkron/api/openapi.yaml``) matches the Flask app, and real answers match it.

* every route + method the app serves is documented, and every documented operation is served;
* the document is well formed: every ``$ref`` resolves, every operation has responses, path
  parameters match the path templates;
* ``GET /v1/openapi.json`` serves the document;
* a real agent's answers to every documented operation have a documented status, content type,
  the required headers, and a body that validates against the documented schema.
"""

from __future__ import annotations

import http.client
import json
import re
from datetime import datetime
from importlib import resources
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from dkron.api.app import create_app

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
IMPLICIT = {"HEAD", "OPTIONS"}  # answered by Flask on every route, not documented


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    text = resources.files("dkron.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(SimpleNamespace(node_name="stub"))  # routes need no running agent


def app_operations(app: Any) -> set[tuple[str, str]]:
    ops = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        if path.startswith("/ui/") and path != "/ui/":
            continue  # the web UI's other HTML pages and static files: tested in a browser (tests/ui)
        for method in rule.methods - IMPLICIT:
            ops.add((path, method.lower()))
    return ops


def doc_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in METHODS}


def resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local references are used: {ref}"
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


# -- the document and the app agree ----------------------------------------------------------------
def test_every_route_the_app_serves_is_documented(app, spec):
    missing = app_operations(app) - doc_operations(spec)
    assert not missing, f"routes without documentation in openapi.yaml: {sorted(missing)}"


def test_every_documented_operation_is_served(app, spec):
    extra = doc_operations(spec) - app_operations(app)
    assert not extra, f"documented operations the app does not serve: {sorted(extra)}"


def test_the_expected_core_operations_are_there(spec):
    ops = doc_operations(spec)
    for op in [
        ("/v1/jobs", "get"),
        ("/v1/jobs", "post"),
        ("/v1/jobs", "patch"),
        ("/v1/jobs/{job_name}", "put"),
        ("/v1/jobs/{job_name}", "post"),
        ("/v1/jobs/{job_name}/executions/{execution_id}/kill", "post"),
        ("/v1/restore", "post"),
        ("/v1/openapi.json", "get"),
    ]:
        assert op in ops


def test_the_app_answers_an_undocumented_method_with_405_json_and_allow(app):
    res = app.test_client().delete("/v1/busy")
    assert res.status_code == 405
    assert res.get_json() == {"error": "method DELETE is not allowed on /v1/busy"}
    assert set(res.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_openapi_json_serves_the_document(app, spec):
    res = app.test_client().get("/v1/openapi.json")
    assert res.status_code == 200 and res.mimetype == "application/json"
    assert res.get_json() == spec
    assert res.headers["X-Whom"] == "stub"


# -- the document is well formed --------------------------------------------------------------------
def test_the_document_is_openapi_3_1_with_info(spec):
    assert spec["openapi"].startswith("3.1.")
    assert spec["info"]["title"] and spec["info"]["version"]


def test_every_reference_resolves(spec):
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                try:
                    resolve(spec, node)
                except (KeyError, TypeError):
                    pytest.fail(f"{where}: $ref {node['$ref']} does not resolve")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(spec, "#")


def test_every_component_is_used(spec):
    text = json.dumps(spec)
    unused = [
        f"{kind}/{name}"
        for kind, items in spec["components"].items()
        for name in items
        if f'"#/components/{kind}/{name}"' not in text and f'"#/components/{kind}/{name}/' not in text
    ]
    # MethodNotAllowed documents the answer to any undocumented method; it has no operation to hang on.
    assert unused == ["responses/MethodNotAllowed"]


def test_every_operation_is_complete(spec):
    ids = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            assert op.get("summary"), f"{where}: no summary"
            assert op.get("operationId"), f"{where}: no operationId"
            ids.append(op["operationId"])
            assert op.get("responses"), f"{where}: no responses"
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status), f"{where}: bad status {status!r}"
                response = resolve(spec, response)
                assert response.get("description"), f"{where} {status}: no description"
                assert "X-Whom" in response.get("headers", {}), f"{where} {status}: X-Whom not documented"
                for media, content in response.get("content", {}).items():
                    assert "schema" in content, f"{where} {status} {media}: no schema"
                if status.startswith(("4", "5")) and path.startswith("/v1"):
                    schema = resolve(spec, response["content"]["application/json"]["schema"])
                    assert schema is spec["components"]["schemas"]["Error"] or schema.get("const"), where
            assert any(s.startswith("2") or s.startswith("3") for s in op["responses"]), f"{where}: no success"
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_path_parameters_match_the_path_templates(spec):
    for path, item in spec["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        shared = [resolve(spec, p) for p in item.get("parameters", [])]
        for method, op in item.items():
            if method not in METHODS:
                continue
            params = shared + [resolve(spec, p) for p in op.get("parameters", [])]
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == names, f"{method.upper()} {path}: path parameters {declared} != {names}"
            assert all(p.get("required") for p in params if p["in"] == "path")
            assert all("schema" in p for p in params)


def test_operations_that_create_or_start_document_location(spec):
    for path, method, status in [
        ("/v1/jobs", "post", "201"),
        ("/v1/jobs", "patch", "201"),
        ("/v1/jobs/{job_name}", "put", "201"),
        ("/v1/jobs/{job_name}", "post", "202"),
        ("/v1/jobs/{job_name}/run", "post", "202"),
        ("/v1/jobs/{job_name}/toggle", "post", "200"),
    ]:
        response = resolve(spec, spec["paths"][path][method]["responses"][status])
        assert "Location" in response["headers"], f"{method} {path}"


def test_lists_document_x_total_count(spec):
    for path in ["/v1/jobs", "/v1/members", "/v1/busy", "/v1/jobs/{job_name}/executions"]:
        response = resolve(spec, spec["paths"][path]["get"]["responses"]["200"])
        assert "X-Total-Count" in response["headers"], path


def test_job_schema_marks_computed_fields_read_only(spec):
    schemas = spec["components"]["schemas"]
    job = schemas["Job"]["properties"]
    for field in ["id", "success_count", "error_count", "status", "next", "dependent_jobs", "last_success"]:
        assert resolve(spec, job[field]).get("readOnly") or any(
            resolve(spec, s).get("readOnly") for s in job[field].get("allOf", [])
        ), field
        assert schemas["JobBody"]["properties"][field]["readOnly"] is True
    assert schemas["JobBody"]["additionalProperties"] is False


# -- real answers match the document ------------------------------------------------------------------
class SchemaError(AssertionError):
    pass


def validate(spec: dict[str, Any], schema: Any, value: Any, where: str = "$") -> None:
    """A small JSON Schema 2020-12 validator: the keywords openapi.yaml uses, nothing more."""
    if isinstance(schema, dict) and "$ref" in schema:
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        validate(spec, resolve(spec, {"$ref": schema["$ref"]}), value, where)
        schema = siblings
    if schema is True or schema == {}:
        return
    if schema is False:
        raise SchemaError(f"{where}: no value is allowed here")
    types = schema.get("type")
    if types is not None:
        kinds = [types] if isinstance(types, str) else types
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
        }
        if not any(checks[k](value) for k in kinds):
            raise SchemaError(f"{where}: {value!r} is not of type {types}")
    if "const" in schema and value != schema["const"]:
        raise SchemaError(f"{where}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaError(f"{where}: {value!r} does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            raise SchemaError(f"{where}: length of {value!r} out of bounds")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise SchemaError(f"{where}: {value!r} is not a date-time") from None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and (value < schema.get("minimum", value) or value > schema.get("maximum", value)):
        raise SchemaError(f"{where}: {value} out of bounds")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                raise SchemaError(f"{where}: required property {name!r} is missing")
        props = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                validate(spec, schema["propertyNames"], key, f"{where}.<key {key!r}>")
            if key in props:
                validate(spec, props[key], item, f"{where}.{key}")
            elif "additionalProperties" in schema:
                validate(spec, schema["additionalProperties"], item, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(spec, schema["items"], item, f"{where}[{i}]")
    for sub in schema.get("allOf", []):
        validate(spec, sub, value, where)
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                validate(spec, sub, value, where)
                break
            except SchemaError as exc:
                errors.append(str(exc))
        else:
            raise SchemaError(f"{where}: matches none of anyOf: {errors}")
    if "not" in schema:
        try:
            validate(spec, schema["not"], value, where)
        except SchemaError:
            pass
        else:
            raise SchemaError(f"{where}: {value!r} matches a 'not' schema")
    if "if" in schema:
        try:
            validate(spec, schema["if"], value, where)
            branch = schema.get("then")
        except SchemaError:
            branch = schema.get("else")
        if branch is not None:
            validate(spec, branch, value, where)


def test_the_small_validator_rejects_what_it_should(spec):
    job_body = {"$ref": "#/components/schemas/JobInput"}
    good = {"name": "a", "schedule": "@manually", "executor": "shell", "executor_config": {"command": "x"}}
    validate(spec, job_body, good)
    validate(spec, job_body, {**good, "schedule": None, "parent_job": "p"})
    for bad in [
        {**good, "command": "x"},
        {k: v for k, v in good.items() if k != "name"},
        {k: v for k, v in good.items() if k != "schedule"},
        {**good, "schedule": "  "},
        {**good, "parent_job": "Bad Parent"},
        {**good, "retries": -1},
        {**good, "disabled": "yes"},
        {**good, "tags": {"role": "web:0"}},
        {**good, "name": "Bad Name"},
    ]:
        with pytest.raises(SchemaError):
            validate(spec, job_body, bad)
    with pytest.raises(SchemaError):
        validate(spec, {"$ref": "#/components/schemas/Error"}, {"error": "x", "trace": "..."})


class Recorder:
    """Calls the agent and checks every answer against the document's operation."""

    def __init__(self, agent: Any, spec: dict[str, Any]) -> None:
        self.agent = agent
        self.spec = spec
        self.seen: set[tuple[str, str]] = set()
        self.statuses: set[tuple[str, str, int]] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        bare = path.split("?")[0]
        for template, item in self.spec["paths"].items():
            regex = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(regex, bare) and method in item:
                return template, item[method]
        raise AssertionError(f"{method.upper()} {bare} is not documented")

    def check(self, method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
        template, op = self.operation(method, path)
        self.seen.add((template, method))
        self.statuses.add((template, method, status))
        where = f"{method.upper()} {path} -> {status}"
        assert str(status) in op["responses"], f"{where}: status not documented ({list(op['responses'])})"
        response = resolve(self.spec, op["responses"][str(status)])
        lower = {k.lower(): v for k, v in headers.items()}
        for name, header in response.get("headers", {}).items():
            header = resolve(self.spec, header)
            if header.get("required"):
                assert name.lower() in lower, f"{where}: header {name} missing"
                value = lower[name.lower()]
                if resolve(self.spec, header["schema"]).get("type") == "integer":
                    value = int(value)
                validate(self.spec, header["schema"], value, f"{where} header {name}")
        media = lower.get("content-type", "").split(";")[0].strip()
        assert media in response.get("content", {}), f"{where}: content type {media!r} not documented"
        if media == "application/json":
            data = json.loads(body)
            validate(self.spec, response["content"][media]["schema"], data, where)
            return data
        return body

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        res = self.agent.request(method.upper(), path, body, **kw)
        return res.status, self.check(method, path, res.status, res.headers, res.body), res.headers

    def no_redirect(self, method: str, path: str) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.agent.http_port, timeout=10)
        try:
            conn.request(method.upper(), path)
            res = conn.getresponse()
            body = res.read()
            return res.status, self.check(method, path, res.status, dict(res.getheaders()), body)
        finally:
            conn.close()


@pytest.fixture
def tagged_agent(agent_factory):
    """A real agent tagged role=x, so that the jobs below (tags {"role": "x"}) have a node to run on."""
    return agent_factory(extra_args=("--tag", "role=x")).start()


def test_real_answers_conform_to_the_document(tagged_agent, spec):
    call = Recorder(tagged_agent, spec)
    for path in ["/health", "/v1", "/v1/", "/v1/leader", "/v1/isleader", "/v1/members", "/v1/busy", "/v1/pause"]:
        assert call("get", path)[0] == 200
    assert call("get", "/v1/plugins")[0] == 200
    assert call("get", "/v1/openapi.json?pretty")[1] == spec
    assert call("post", "/v1/pause")[1]["paused"] is True
    status, body, _ = call("post", "/v1/jobs", {"name": "p", "schedule": "@manually", "executor": "shell"})
    assert status == 503 and "paused" in body["error"]
    assert call("post", "/v1/unpause")[1]["paused"] is False
    assert call("post", "/v1/pause?scheduling=true")[1]["scheduling_paused"] is True
    assert call("post", "/v1/unpause?scheduling=true")[1]["scheduling_paused"] is False

    parent = {
        "name": "parent",
        "displayname": "Parent",
        "schedule": "@every 1h",
        "timezone": "Europe/Madrid",
        "executor": "shell",
        # A secret: every answer of this walk through the API is scanned for it (dkron.api.leakcheck).
        "executor_config": {"command": "echo hello", "timeout": "10s", "secret_env": "DB_PASSWORD=openapi-canary-1"},
        "tags": {"role": "x"},
        "metadata": {"team": "a"},
        "processors": {"log": {"forward": True}},
        "starts_at": "2020-01-01T00:00:00Z",
        "expires_at": "2999-01-01T00:00",
        "retries": 1,
        "concurrency": "forbid",
    }
    assert call("post", "/v1/jobs", parent)[0] == 201
    assert call("patch", "/v1/jobs", {**parent, "owner": "me"})[0] == 201
    child = {"name": "child", "parent_job": "parent", "executor": "shell", "executor_config": {"command": "true"}}
    assert call("put", "/v1/jobs/child", child)[0] == 201
    assert call("post", "/v1/jobs?runoncreate=1", {**child, "name": "child2"})[1]["execution_id"]
    assert call("post", "/v1/jobs", {**child, "parent_job": "ghost"})[0] == 404
    assert call("post", "/v1/jobs", {**child, "command": "x"})[0] == 400
    assert call("post", "/v1/jobs", raw=b"x" * (1024 * 1024 + 1))[0] == 413
    assert call("get", "/v1/jobs?_sort=name&_order=desc&_start=0&_end=2&q=a&disabled=false")[0] == 200
    assert call("get", "/v1/jobs?metadata[team]=a&status=untriggered")[0] == 200
    assert call("get", "/v1/jobs?_sort=nope")[0] == 400
    assert call("get", "/v1/jobs/parent")[0] == 200
    assert call("get", "/v1/jobs/ghost")[0] == 404
    assert len(call("get", "/v1/jobs/parent/next?n=3")[1]["next"]) == 3
    assert call("get", "/v1/jobs/child/next")[1]["next"] == []
    assert call("get", "/v1/jobs/parent/next?n=0")[0] == 400
    assert call("get", "/v1/jobs/ghost/next")[0] == 404

    status, run, _ = call("post", "/v1/jobs/parent/run")
    assert status == 202
    assert call("post", "/v1/jobs/parent")[0] in (202, 409)  # forbid: 409 while the first run is running
    # Not running any more: neither in the runner (busy) nor in the store (its final record committed).
    tagged_agent.wait_for(
        lambda: (
            not tagged_agent.get("/v1/busy").json()
            and all(e["status"] != "running" for e in tagged_agent.get("/v1/jobs/parent/executions").json())
        )
    )
    assert call("post", "/v1/jobs/parent")[0] == 202
    assert call("post", "/v1/jobs/ghost/run")[0] == 404
    assert call("post", "/v1/jobs/ghost")[0] == 404
    assert call("post", "/v1/jobs/parent/toggle")[1]["disabled"] is True
    assert call("post", "/v1/jobs/ghost/toggle")[0] == 404
    tagged_agent.wait_for(lambda: len(tagged_agent.get("/v1/jobs/parent/executions").json()) >= 2)
    assert len(call("get", "/v1/jobs/parent/executions?output_size_limit=2&_sort=started_at&_order=ASC")[1]) >= 2
    assert call("get", "/v1/jobs/parent/executions?_start=x")[0] == 400
    assert call("get", "/v1/jobs/ghost/executions")[0] == 404
    assert call("get", f"/v1/jobs/parent/executions/{run['execution_id']}")[1]["status"] == "success"
    assert call("get", "/v1/jobs/parent/executions/nope")[0] == 404
    stream = f"/v1/jobs/parent/executions/{run['execution_id']}/stream"
    assert b"event: done" in call("get", stream)[1]
    assert call("get", stream + "?max_seconds=0")[0] == 400
    assert call("get", "/v1/jobs/ghost/executions/x/stream")[0] == 404
    preview = call("get", "/v1/schedule/preview?schedule=0+30+9+*+*+*&timezone=Asia/Tokyo&n=3")[1]
    assert len(preview["next"]) == 3 and preview["next"][0]["local"].endswith("T09:30:00+09:00")
    assert call("get", "/v1/schedule/preview?schedule=nope")[1]["field"] == "schedule"
    assert any(e["name"] == "shell" and e["config_schema"] for e in call("get", "/v1/executors")[1])
    assert [j["name"] for j in call("get", "/v1/jobs?tag=role=x&executor=shell")[1]] == ["parent"]

    sleeper = {
        "name": "sleeper",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "sleep 30"},
    }
    assert call("post", "/v1/jobs", sleeper)[0] == 201
    exec_id = call("post", "/v1/jobs/sleeper/run")[1]["execution_id"]
    tagged_agent.wait_for(lambda: tagged_agent.get("/v1/busy").json())
    assert call("get", "/v1/busy")[1][0]["status"] == "running"
    assert call("get", f"/v1/jobs/sleeper/executions/{exec_id}")[1]["status"] == "running"
    assert call("post", f"/v1/jobs/sleeper/executions/{exec_id}/kill")[0] == 202
    assert call("post", f"/v1/jobs/sleeper/executions/{exec_id}/kill")[0] in (202, 404)
    assert call("post", "/v1/jobs/sleeper/executions/nope/kill")[0] == 404
    status, metrics, _ = call("get", "/metrics")
    assert status == 200 and b'dkron_job_runs_started_total{job="sleeper"} 1.0' in metrics
    tagged_agent.wait_for(
        lambda: tagged_agent.get(f"/v1/jobs/sleeper/executions/{exec_id}").json()["status"] == "failed", timeout=5
    )

    assert call("delete", "/v1/jobs/parent/executions")[1]["success_count"] == 0
    assert call("delete", "/v1/jobs/ghost/executions")[0] == 404
    assert call("delete", "/v1/jobs/parent")[0] == 409
    assert call("delete", "/v1/jobs/ghost")[0] == 404
    backup = tagged_agent.get("/v1/jobs").json()
    assert call("post", "/v1/restore", backup)[1]["restored"] == len(backup)
    assert call("post", "/v1/restore", {"not": "a list"})[0] == 400
    for name in ["child", "child2", "sleeper", "parent"]:
        assert call("delete", f"/v1/jobs/{name}")[0] == 200

    status, token, _ = call("post", "/v1/acl/bootstrap")
    assert status == 201 and token["secret"].startswith("dkr_") and token["role"] == "admin"
    assert call("post", "/v1/acl/bootstrap")[0] == 409
    assert call("get", "/v1/acl/token/self")[1]["acl_enabled"] is False
    status, token, _ = call("post", "/v1/acl/tokens", {"name": "ci", "role": "run", "scope": {"jobs": "ci-*"}})
    assert status == 201
    assert call("post", "/v1/acl/tokens", {"role": "root"})[0] == 400
    assert len(call("get", "/v1/acl/tokens")[1]) == 2
    assert call("get", f"/v1/acl/tokens/{token['accessor']}")[1]["scope"] == {"jobs": "ci-*"}
    assert call("delete", f"/v1/acl/tokens/{token['accessor']}")[1]["revoked_at"]
    assert call("get", "/v1/acl/tokens/nope")[0] == 404
    status, entries, _ = call("get", "/v1/audit?action=job.*&_end=5")
    assert status == 200 and len(entries) == 5 and all(e["action"].startswith("job.") for e in entries)
    assert call("get", "/v1/audit?since=yesterday")[0] == 400

    assert call.no_redirect("get", "/")[0] == 303
    assert call.no_redirect("get", "/ui/")[0] == 200
    assert call("post", "/v1/leave")[1]["leaving"] == tagged_agent.node_name
    assert tagged_agent.proc.wait(timeout=10) == 0  # the agent really stops, gracefully
    assert "dkron.agent: stopped" in tagged_agent.log()

    documented = doc_operations(spec)
    assert call.seen == documented, f"operations not exercised: {sorted(documented - call.seen)}"
