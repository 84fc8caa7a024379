"""ACLs in a 3-server cluster: tokens are replicated, checked on the follower that receives the
request, and the work it forwards to the leader (writes through Raft, manual runs over gRPC) is
done for authorised callers only; the audit log is the same on every server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dkron.localcluster import Http, LocalCluster, wait_for


def call(url: str, method: str, path: str, token: str | None, body: Any = None) -> Http:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("X-Dkron-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return Http(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Http(err.code, err.read(), dict(err.headers))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("acl-cluster"), agents={})
    for server in c.servers:
        server.extra_args += ["--acl-enabled"]
    with c:
        for node in c.nodes:
            node.start()
        # Only /health answers without a token: wait for a leader there, bootstrap, then use the token.
        server = wait_for(
            lambda: next((s for s in c.servers if s.get("/health").status == 200), None), 90, "a healthy server"
        )
        admin = server.post("/v1/acl/bootstrap")
        assert admin.status == 201, admin
        for node in c.servers:
            node.token = admin.json()["secret"]
        c.wait_ready()
        yield c


def test_tokens_work_on_every_server_and_followers_forward_for_authorised_callers_only(cluster, tmp_path: Path):
    leader = cluster.leader()
    follower = cluster.followers()[0]
    other = next(s for s in cluster.servers if s not in (leader, follower))
    secret = leader.token
    assert call(follower.url, "POST", "/v1/acl/bootstrap", None).status == 409  # once for the whole cluster
    reader = call(follower.url, "POST", "/v1/acl/tokens", secret, {"name": "r", "role": "read"}).json()
    # The tokens reach every server with the commit.
    wait_for(lambda: call(other.url, "GET", "/v1/jobs", reader["secret"]).status == 200, 15, "token replicated")
    marker = tmp_path / "ran"
    job = {
        "name": "guarded",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": f"touch {marker}"},
    }
    # A read token cannot make a follower forward a write or a run to the leader.
    assert call(follower.url, "POST", "/v1/jobs", reader["secret"], job).status == 403
    assert call(follower.url, "POST", "/v1/jobs", None, job).status == 401
    assert call(follower.url, "POST", "/v1/jobs", secret, job).status == 201
    assert call(follower.url, "POST", "/v1/jobs/guarded/run", reader["secret"]).status == 403
    assert not marker.exists()
    assert call(follower.url, "POST", "/v1/jobs/guarded/run", secret).status == 202
    wait_for(marker.exists, 15, "the authorised run")
    # Revoked through one server: refused by every other one.
    assert call(leader.url, "DELETE", f"/v1/acl/tokens/{reader['accessor']}", secret).status == 200
    wait_for(lambda: call(other.url, "GET", "/v1/jobs", reader["secret"]).status == 401, 15, "revocation replicated")
    # The audit log is replicated: the same entries, with the follower as the receiving node.
    entries = wait_for(
        lambda: (e := call(other.url, "GET", "/v1/audit?target=guarded", secret).json()) and len(e) >= 2 and e,
        15,
        "audit replicated",
    )
    assert [e["action"] for e in entries][:2] == ["job.run", "job.create"]
    assert {e["node"] for e in entries} == {follower.name}
