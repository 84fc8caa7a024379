"""API tokens and roles against a real agent with ``--acl-enabled``.

* every route of the app has an access policy (a route added without one fails here), and a live
  agent refuses every non-public route a missing, wrong, revoked or under-privileged token;
* a ``read`` token cannot create a shell job; a team-scoped token cannot see or touch another
  team's job, nor take it over, nor act on the whole cluster;
* the audit log records who changed what, from where, with a diff; bootstrap happens once;
* cookies work for the UI but never for a cross-site change; ACLs off is said loudly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from dkron.api import auth
from dkron.api.app import create_app
from dkron.testing import AgentProcess

IMPLICIT = {"HEAD", "OPTIONS"}
SAMPLE_ARGS = {"job_name": "no-such-job", "execution_id": "x", "accessor": "x", "filename": "x.css", "path": "x"}


def shell_job(name: str, command: str = "true", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": command},
        **fields,
    }


def routes() -> list[tuple[str, str, str]]:
    """(endpoint, method, concrete path) for every route of the app."""
    app = create_app(SimpleNamespace(node_name="stub"))
    found = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: SAMPLE_ARGS.get(m.group(1), "x"), rule.rule)
        for method in sorted(rule.methods - IMPLICIT):
            found.append((rule.endpoint, method, path))
    return found


def test_every_route_has_an_access_policy():
    missing = sorted({f"{method} {ep}" for ep, method, _ in routes() if auth.policy_for(ep, method) is None})
    assert not missing, f"routes without an entry in dkron.api.auth.POLICIES (they are refused): {missing}"


def test_the_policy_table_names_no_route_that_does_not_exist():
    endpoints = {endpoint for endpoint, _, _ in routes()}
    stale = sorted(set(auth.POLICIES) - endpoints)
    assert not stale, f"policies for endpoints that do not exist: {stale}"


def test_an_endpoint_without_a_policy_is_refused():
    app = create_app(SimpleNamespace(node_name="stub", config={"acl-enabled": False}))

    @app.get("/v1/forgotten")
    def forgotten() -> str:
        return "should never be served"

    response = app.test_client().get("/v1/forgotten")
    assert response.status_code == 403
    assert "no access policy" in response.get_json()["error"]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    base = tmp_path_factory.mktemp("acl")
    agent = AgentProcess(base / "data", extra_args=("--acl-enabled",)).start()
    try:
        boot = agent.post("/v1/acl/bootstrap")
        assert boot.status == 201, boot
        admin = boot.json()["secret"]
        tokens = {"admin": admin}
        for role in ("read", "run", "write"):
            made = agent.post("/v1/acl/tokens", {"name": role, "role": role}, headers=bearer(admin))
            assert made.status == 201, made
            tokens[role] = made.json()["secret"]
        for team in ("a", "b"):
            scope = {"jobs": f"{team}-*", "metadata": {"team": team}}
            made = agent.post(
                "/v1/acl/tokens", {"name": f"team {team}", "role": "write", "scope": scope}, headers=bearer(admin)
            )
            tokens[f"team-{team}"] = made.json()["secret"]
        revoked = agent.post("/v1/acl/tokens", {"name": "old", "role": "admin"}, headers=bearer(admin)).json()
        assert agent.request("DELETE", f"/v1/acl/tokens/{revoked['accessor']}", headers=bearer(admin)).status == 200
        tokens["revoked"] = revoked["secret"]
        yield SimpleNamespace(agent=agent, tokens=tokens, base=base)
    finally:
        agent.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(secured: SimpleNamespace, method: str, path: str, who: str | None, body: Any = None, **headers: str):
    if who is not None:
        headers = {**bearer(secured.tokens[who]), **headers}
    data = None if body is None else body
    return secured.agent.request(method, path, data, headers=headers)


def test_every_route_refuses_missing_wrong_revoked_and_underprivileged_tokens(secured):
    checked = 0
    for endpoint, method, path in routes():
        policy = auth.policy_for(endpoint, method)
        assert policy is not None
        if policy.role is None:
            continue
        attempts: list[tuple[str, dict[str, str], int]] = [
            ("no token", {}, 401),
            ("wrong token", bearer("dkr_" + "x" * 43), 401),
            ("wrong token (X-Dkron-Token)", {"X-Dkron-Token": "nope"}, 401),
            ("revoked token", bearer(secured.tokens["revoked"]), 401),
            ("not a bearer token", {"Authorization": f"Basic {secured.tokens['admin']}"}, 401),
        ]
        below = [role for role in auth.ROLES if auth.RANK[role] < auth.RANK[policy.role]]
        attempts += [(f"{role} token", bearer(secured.tokens[role]), 403) for role in below]
        # A team's write token: out of scope for another job (here no-such-job, outside a-*),
        # and never allowed to change the whole cluster.
        if policy.scope in ("job", "job+body", "body") or (policy.scope == "cluster" and policy.role != "read"):
            attempts.append(("out-of-scope team token", bearer(secured.tokens["team-a"]), 403))
        for what, headers, expected in attempts:
            response = secured.agent.request(
                method, path, {} if method in ("POST", "PUT", "PATCH") else None, headers=headers
            )
            assert response.status == expected, f"{method} {path} ({endpoint}) with {what}: {response}"
            assert "error" in response.json(), f"{method} {path}: not a JSON error"
            checked += 1
    assert checked > 100  # every route, several tokens each


def test_public_routes_need_no_token(secured):
    assert secured.agent.get("/health").status == 200
    assert secured.agent.get("/v1/openapi.json").status == 200


def test_a_read_token_cannot_create_a_shell_job(secured, tmp_path):
    marker = tmp_path / "ran"
    job = shell_job("read-tries", f"touch {marker}")
    for path, method in (("/v1/jobs", "POST"), ("/v1/jobs", "PATCH"), ("/v1/jobs/read-tries", "PUT")):
        response = call(secured, method, path + "?runoncreate=1", "read", job)
        assert response.status == 403, response
        assert "write" in response.json()["error"]
    assert call(secured, "POST", "/v1/restore", "read", [job]).status == 403
    assert call(secured, "GET", "/v1/jobs/read-tries", "admin").status == 404
    assert not marker.exists()


def test_roles_grow_from_read_to_admin(secured):
    assert call(secured, "POST", "/v1/jobs", "write", shell_job("roles-job")).status == 201
    assert call(secured, "GET", "/v1/jobs/roles-job", "read").status == 200
    assert call(secured, "POST", "/v1/jobs/roles-job/run", "read").status == 403
    assert call(secured, "POST", "/v1/jobs/roles-job/run", "run").status == 202
    assert call(secured, "POST", "/v1/jobs/roles-job/toggle", "run").status == 403
    assert call(secured, "POST", "/v1/jobs/roles-job/toggle", "write").status == 200
    assert call(secured, "GET", "/v1/acl/tokens", "write").status == 403
    assert call(secured, "GET", "/v1/acl/tokens", "admin").status == 200
    assert call(secured, "POST", "/v1/leave", "write").status == 403
    assert call(secured, "DELETE", "/v1/jobs/roles-job", "write").status == 200


def test_a_team_token_cannot_touch_another_teams_job(secured):
    assert call(secured, "POST", "/v1/jobs", "team-a", shell_job("a-report", metadata={"team": "a"})).status == 201
    assert call(secured, "POST", "/v1/jobs", "team-b", shell_job("b-backup", metadata={"team": "b"})).status == 201
    # Reading, changing, running, deleting the other team's job: refused.
    for method, path, body in [
        ("GET", "/v1/jobs/b-backup", None),
        ("PUT", "/v1/jobs/b-backup", shell_job("b-backup", "echo pwned", metadata={"team": "a"})),
        ("POST", "/v1/jobs", shell_job("b-backup", "echo pwned", metadata={"team": "b"})),
        ("POST", "/v1/jobs/b-backup/run", None),
        ("POST", "/v1/jobs/b-backup/toggle", None),
        ("DELETE", "/v1/jobs/b-backup", None),
        ("GET", "/v1/jobs/b-backup/executions", None),
        ("DELETE", "/v1/jobs/b-backup/executions", None),
        ("POST", "/v1/restore", [shell_job("b-backup", "echo pwned", metadata={"team": "b"})]),
    ]:
        response = call(secured, method, path, "team-a", body)
        assert response.status == 403, f"{method} {path}: {response}"
    # Creating a job outside its scope (name or metadata): refused.
    assert call(secured, "POST", "/v1/jobs", "team-a", shell_job("b-new", metadata={"team": "a"})).status == 403
    assert call(secured, "POST", "/v1/jobs", "team-a", shell_job("a-new", metadata={"team": "b"})).status == 403
    assert call(secured, "POST", "/v1/jobs", "team-a", shell_job("a-untagged")).status == 403
    # Its own job: everything works.
    assert call(secured, "POST", "/v1/jobs/a-report/run", "team-a").status == 202
    assert call(secured, "GET", "/v1/jobs/a-report/executions", "team-a").status == 200
    # Lists show only its own jobs, and count only them.
    listed = call(secured, "GET", "/v1/jobs", "team-a")
    assert [j["name"] for j in listed.json()] == ["a-report"] and listed.headers["X-Total-Count"] == "1"
    assert "b-backup" in [j["name"] for j in call(secured, "GET", "/v1/jobs", "read").json()]
    # The whole cluster is not a team's to pause.
    assert call(secured, "POST", "/v1/pause", "team-a").status == 403
    assert call(secured, "GET", "/v1/jobs/b-backup", "admin").json()["executor_config"]["command"] == "true"


def test_a_multipart_restore_is_checked_against_the_scope_too(secured):
    assert call(secured, "POST", "/v1/jobs", "team-b", shell_job("b-owned", metadata={"team": "b"})).status == 201
    boundary = "----dkron-acl-boundary"

    def upload(jobs: list[dict[str, Any]]) -> Any:
        raw = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.json"\r\n'
                "Content-Type: application/json\r\n\r\n"
            ).encode()
            + json.dumps(jobs).encode()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {**bearer(secured.tokens["team-a"]), "Content-Type": f"multipart/form-data; boundary={boundary}"}
        return secured.agent.request("POST", "/v1/restore", raw=raw, headers=headers)

    hijack = upload([shell_job("b-owned", "echo pwned", metadata={"team": "b"})])
    assert hijack.status == 403, hijack
    assert call(secured, "GET", "/v1/jobs/b-owned", "admin").json()["executor_config"]["command"] == "true"
    own = upload([shell_job("a-restored", metadata={"team": "a"})])
    assert own.status == 200 and own.json()["restored"] == 1  # the view still reads the upload


def test_a_ui_route_that_changes_something_needs_its_own_policy():
    app = create_app(SimpleNamespace(node_name="stub", config={"acl-enabled": False}))
    app.add_url_rule(
        "/ui/things/<job_name>/delete",
        endpoint="ui.delete_thing",
        view_func=lambda job_name: "deleted",
        methods=["POST"],
    )
    app.add_url_rule("/ui/things", endpoint="ui.things_page", view_func=lambda: "page")
    assert auth.policy_for("ui.delete_thing", "POST") is None
    assert auth.policy_for("ui.things_page", "GET") == auth.Policy("read")
    client = app.test_client()
    assert client.post("/ui/things/x/delete").status_code == 403  # refused even with ACLs off
    assert client.get("/ui/things").status_code == 200


def test_a_revoked_token_is_refused_from_the_next_request(secured):
    made = call(secured, "POST", "/v1/acl/tokens", "admin", {"name": "short-lived", "role": "read"}).json()
    assert secured.agent.get("/v1/jobs", headers=bearer(made["secret"])).status == 200
    assert call(secured, "DELETE", f"/v1/acl/tokens/{made['accessor']}", "admin").status == 200
    response = secured.agent.get("/v1/jobs", headers=bearer(made["secret"]))
    assert response.status == 401 and "revoked" in response.json()["error"]
    listed = {t["accessor"]: t for t in call(secured, "GET", "/v1/acl/tokens", "admin").json()}
    assert listed[made["accessor"]]["revoked_at"]
    assert all("secret" not in t and "secret_hash" not in t for t in listed.values())


def test_tokens_are_stored_hashed(secured):
    data = (secured.base / "data" / "state.db").read_bytes()
    for secret in secured.tokens.values():
        assert secret.encode() not in data


def test_bootstrap_happens_once(secured):
    again = secured.agent.post("/v1/acl/bootstrap")
    assert again.status == 409 and "already bootstrapped" in again.json()["error"]


def test_scoped_admin_tokens_and_bad_roles_are_refused(secured):
    assert call(secured, "POST", "/v1/acl/tokens", "admin", {"role": "admin", "scope": {"jobs": "a-*"}}).status == 400
    assert call(secured, "POST", "/v1/acl/tokens", "admin", {"role": "superuser"}).status == 400
    assert call(secured, "POST", "/v1/acl/tokens", "admin", {"role": "read", "scope": "a-*"}).status == 400


def test_the_audit_log_says_who_did_what_from_where(secured):
    assert (
        call(secured, "PUT", "/v1/jobs/a-audited", "team-a", shell_job("a-audited", metadata={"team": "a"})).status
        == 201
    )
    changed = shell_job("a-audited", "echo changed", metadata={"team": "a"})
    assert call(secured, "PUT", "/v1/jobs/a-audited", "team-a", changed).status == 201
    assert call(secured, "POST", "/v1/jobs/a-audited/toggle", "team-a").status == 200
    assert call(secured, "DELETE", "/v1/jobs/a-audited", "team-a").status == 200
    assert call(secured, "GET", "/v1/audit", "write").status == 403
    entries = call(secured, "GET", "/v1/audit?target=a-audited", "admin").json()
    assert [e["action"] for e in entries] == ["job.delete", "job.toggle", "job.update", "job.create"]
    update = entries[2]
    assert update["actor_name"] == "team a" and update["remote_addr"] == "127.0.0.1" and update["node"] == "node1"
    assert update["details"]["changes"]["executor_config"] == [{"command": "true"}, {"command": "echo changed"}]
    tokens = call(secured, "GET", "/v1/audit?action=acl.*", "admin").json()
    assert {e["action"] for e in tokens} >= {"acl.bootstrap", "acl.token.create", "acl.token.revoke"}


def test_the_cli_manages_tokens_and_shows_the_audit_log(secured):
    env_args = ["--address", secured.agent.url, "--token", secured.tokens["admin"]]

    def dkron(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dkron.cli", *args], capture_output=True, text=True, timeout=30)

    made = dkron("acl", "token", "create", "--role", "run", "--name", "cli-made", "--jobs", "a-*", *env_args)
    assert made.returncode == 0, made.stderr
    accessor = re.search(r"AccessorID: (\S+)", made.stdout).group(1)
    secret = re.search(r"SecretID:\s+(\S+)", made.stdout).group(1)
    assert secured.agent.get("/v1/jobs", headers=bearer(secret)).status == 200
    listed = dkron("acl", "token", "list", *env_args)
    assert "cli-made" in listed.stdout and "jobs=a-*" in listed.stdout and secret not in listed.stdout
    assert dkron("acl", "token", "revoke", accessor, *env_args).returncode == 0
    assert secured.agent.get("/v1/jobs", headers=bearer(secret)).status == 401
    audit = dkron("audit", "--action", "acl.*", *env_args)
    assert audit.returncode == 0 and "acl.token.revoke" in audit.stdout
    refused = dkron("acl", "token", "list", "--address", secured.agent.url, "--token", secured.tokens["read"])
    assert refused.returncode == 1 and "403" in refused.stderr
    again = dkron("acl", "bootstrap", "--address", secured.agent.url)
    assert again.returncode == 1 and "already bootstrapped" in again.stderr


def test_the_ui_cookie_works_but_never_for_a_cross_site_change(secured):
    cookie = {"Cookie": f"dkron_token={secured.tokens['write']}"}
    assert secured.agent.get("/v1/jobs", headers=cookie).status == 200
    same_site = {**cookie, "Origin": secured.agent.url}
    assert secured.agent.post("/v1/jobs", shell_job("cookie-job"), headers=same_site).status == 201
    cross = secured.agent.post("/v1/jobs", shell_job("csrf-job"), headers={**cookie, "Origin": "https://evil.example"})
    assert cross.status == 403 and "cross-site" in cross.json()["error"]
    fetch = secured.agent.post("/v1/jobs", shell_job("csrf-job"), headers={**cookie, "Sec-Fetch-Site": "cross-site"})
    assert fetch.status == 403
    assert call(secured, "GET", "/v1/jobs/csrf-job", "admin").status == 404


def test_the_index_says_acls_are_on(secured):
    assert call(secured, "GET", "/v1", "read").json()["acl"] == {"enabled": True}
    me = call(secured, "GET", "/v1/acl/token/self", "team-a").json()
    assert me["role"] == "write" and me["scope"] == {"jobs": "a-*", "metadata": {"team": "a"}}


def test_with_acls_off_the_agent_says_so_loudly(dkron_agent):
    body = dkron_agent.get("/v1").json()
    assert body["acl"]["enabled"] is False and "anyone" in body["acl"]["warning"]
    assert "ACLs ARE OFF" in dkron_agent.log_path.read_text()
    assert dkron_agent.get("/v1/acl/token/self").json()["accessor"] == "anonymous"


def test_a_ui_page_without_a_token_redirects_a_browser_to_the_login_page():
    stub = SimpleNamespace(node_name="stub", config={"acl-enabled": True})
    client = create_app(stub).test_client()
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = client.get("/ui/?page=2", headers=browser)
    assert response.status_code == 303 and response.headers["Location"].startswith("/ui/login?next=")
    assert client.get("/ui/").status_code == 401  # not a browser: the JSON answer
    assert auth.policy_for("ui.login", "GET") == auth.PUBLIC  # the login page itself is public
    assert client.get("/v1/jobs").status_code == 401  # the API never redirects


def test_audit_retention_keeps_the_newest_entries(agent_factory):
    agent = agent_factory(extra_args=("--audit-retention-count", "5")).start()
    for i in range(8):
        job = shell_job(f"kept-{i}")
        assert agent.post("/v1/jobs", job).status == 201
    entries = agent.get("/v1/audit?_end=100")
    assert entries.headers["X-Total-Count"] == "5"
    assert [e["target"] for e in entries.json()] == [f"kept-{i}" for i in range(7, 2, -1)]
    assert all(e["actor"] == "anonymous" for e in entries.json())


def test_a_server_restarted_without_acls_after_bootstrap_says_it_answers_everyone(agent_factory, tmp_path):
    first = agent_factory(tmp_path / "data", extra_args=("--acl-enabled",)).start()
    assert first.post("/v1/acl/bootstrap").status == 201
    first.stop()
    again = agent_factory(tmp_path / "data", raft_port=first.raft_port).start()
    assert "this server runs without --acl-enabled" in again.log_path.read_text()
    assert again.get("/v1").json()["acl"]["enabled"] is False
