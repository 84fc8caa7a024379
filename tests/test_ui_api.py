"""The API additions the web UI uses, against a real agent: job filters (tag, executor, search
over metadata), the schedule preview, the executors' declared config fields, and the live
output stream (incremental, bounded in time and in number)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dkron.contracts import ConfigField, ExecutorRegistry, RegistrationError
from dkron.testing import AgentProcess


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    node = AgentProcess(tmp_path_factory.mktemp("ui-api") / "data")
    node.start()
    yield node
    node.stop(timeout=15)


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": "true"},
        **fields,
    }


def names(agent: AgentProcess, query: str) -> list[str]:
    answer = agent.get("/v1/jobs?" + query)
    assert answer.status == 200, answer
    return [j["name"] for j in answer.json()]


def test_filters_by_tag_executor_and_search_over_metadata(agent):
    for body in [
        job("f-web1", tags={"pool": "web:2"}, metadata={"owner": "Payments-Team"}),
        job("f-web2", tags={"pool": "web"}),
        job("f-db", tags={"pool": "db", "zone": "a"}),
        job("f-http", executor="http", executor_config={"method": "GET", "url": "http://127.0.0.1:1/"}),
    ]:
        assert agent.post("/v1/jobs", body).status == 201, body["name"]
    assert names(agent, "q=f-&tag=pool=web") == ["f-web1", "f-web2"]  # "web:2" matches "web"
    assert names(agent, "q=f-&tag=zone") == ["f-db"]
    assert names(agent, "q=f-&tag=pool=we") == []  # whole values only
    assert names(agent, "q=f-&executor=http") == ["f-http"]
    assert names(agent, "q=payments-team") == ["f-web1"]  # a metadata value, any letter case
    assert names(agent, "q=100%25") == []  # LIKE wildcards are literal


def test_schedule_preview_answers_times_or_the_parse_error(agent):
    body = agent.get("/v1/schedule/preview?schedule=0+0+12+*+*+*&timezone=America/New_York&n=3").json()
    assert len(body["next"]) == 3
    assert all(
        item["local"].endswith("T12:00:00-05:00") or item["local"].endswith("T12:00:00-04:00") for item in body["next"]
    )
    assert all(item["utc"].endswith("Z") for item in body["next"])
    assert agent.get("/v1/schedule/preview?schedule=@manually").json()["next"] == []
    for query, field, words in [
        ("schedule=61+*+*+*+*+*", "schedule", "can't parse job schedule"),
        ("schedule=@every+1m&timezone=Mars/Olympus", "timezone", "unknown time zone"),
        ("schedule=@every+1m&n=51", "n", "between 1 and 50"),
        ("schedule=", "schedule", "required"),
    ]:
        answer = agent.get("/v1/schedule/preview?" + query)
        assert answer.status == 400 and answer.json()["field"] == field and words in answer.json()["error"], query


def test_executors_list_their_declared_fields(agent):
    listing = {e["name"]: e for e in agent.get("/v1/executors").json()}
    shell_fields = {f["name"]: f for f in listing["shell"]["config_schema"]}
    assert shell_fields["command"]["required"] and shell_fields["shell"]["kind"] == "bool"
    assert [f["name"] for f in listing["http"]["config_schema"]][:2] == ["method", "url"]
    assert listing["kafka"]["config_schema"] is None  # declares none: edited as JSON


def test_a_registry_takes_a_schema_from_the_executor_or_from_add():
    class Echo:
        config_schema = (ConfigField("message", required=True),)

        def validate(self, config):
            return dict(config)

        def execute(self, request, output, cancel):
            raise NotImplementedError

    registry = ExecutorRegistry()
    registry.add("echo", Echo)
    registry.add("echo2", Echo, config_schema=[ConfigField("other", kind="select", choices=("a", "b"))])
    assert registry.schema("echo")[0]["name"] == "message"
    assert registry.schema("echo2")[0]["choices"] == ["a", "b"]
    with pytest.raises(RegistrationError, match="config_schema"):
        registry.add("bad", Echo, config_schema=["message"])
    assert "bad" not in registry  # a refused registration leaves nothing behind
    with pytest.raises(RegistrationError, match="kind"):
        ConfigField("x", kind="colour")


def read_events(agent: AgentProcess, path: str, timeout: float = 30) -> list[tuple[float, str, str]]:
    """(arrival time, event, data) of every event of a stream, until the server closes it."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=timeout)
    conn.request("GET", path)
    res = conn.getresponse()
    assert res.status == 200 and res.getheader("Content-Type").startswith("text/event-stream")
    events, name, data = [], "", []
    for raw in res:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and name:
            events.append((time.monotonic(), name, "\n".join(data)))
            name, data = "", []
    conn.close()
    return events


def test_the_stream_delivers_output_while_it_is_produced_then_ends(agent):
    command = "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.5; done"
    assert agent.post("/v1/jobs", job("s-ticks", executor_config={"command": command, "shell": "true"})).status == 201
    run = agent.post("/v1/jobs/s-ticks/run").json()
    started = time.monotonic()
    events = read_events(agent, f"/v1/jobs/s-ticks/executions/{run['execution_id']}/stream")
    outputs = [(t, d) for t, e, d in events if e == "output"]
    assert len(outputs) >= 3, events  # several increments, not one block at the end
    assert outputs[0][0] - started < 2.0  # the first line arrived long before the 3 s run ended
    assert events[-1][1] == "done" and '"status": "success"' in events[-1][2]
    text = "".join(json.loads(d).get("append", "") for _, d in outputs)
    assert text == "".join(f"line-{i}\n" for i in range(1, 7))


def test_the_stream_is_bounded_in_time_and_in_number(agent):
    assert agent.post("/v1/jobs", job("s-sleep", executor_config={"command": "sleep 20"})).status == 201
    run = agent.post("/v1/jobs/s-sleep/run").json()
    path = f"/v1/jobs/s-sleep/executions/{run['execution_id']}/stream"
    t0 = time.monotonic()
    events = read_events(agent, path + "?max_seconds=1")
    assert events[-1][1] == "timeout" and time.monotonic() - t0 < 5
    # Six streams are served at once; the seventh is refused (and then polls).
    opened, stop = [], threading.Event()

    def hold() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=30)
        conn.request("GET", path + "?max_seconds=30")
        res = conn.getresponse()
        opened.append(res.status)
        stop.wait(10)
        res.close()
        conn.close()

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(opened) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert opened == [200] * 6
        refused = agent.get(path)
        assert refused.status == 503 and "too many" in refused.json()["error"]
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    # Clients that leave free their slots (noticed at the next keep-alive writes), well before
    # their streams' 30 s.
    deadline = time.monotonic() + 12
    while agent.get(path + "?max_seconds=1").status == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert agent.get(path + "?max_seconds=1").status == 200
    agent.post(f"/v1/jobs/s-sleep/executions/{run['execution_id']}/kill")


def test_pages_ask_the_authorizer_when_the_auth_layer_installs_one():
    from types import SimpleNamespace

    from dkron.api.app import create_app

    app = create_app(SimpleNamespace(node_name="stub", is_leader=False))
    app.config["DKRON_UI_AUTHORIZE"] = lambda req: None if req.cookies.get("dkron_token") == "good" else (401, "no")
    client = app.test_client()
    denied = client.get("/ui/jobs?q=x")
    assert denied.status_code == 401 and b"/ui/login?next=/ui/jobs%3Fq%3Dx" in denied.data
    assert client.get("/ui/login").status_code == 200  # the way in stays open
    assert client.get("/ui/static/app.css").status_code == 200
    # Login stores the token: HttpOnly, SameSite=Strict, Secure over HTTPS; only local redirects.
    https = app.test_client()
    answer = https.post("/ui/login", data={"token": "good", "next": "//evil.example/"}, base_url="https://localhost")
    assert answer.status_code == 303 and answer.headers["Location"] == "/ui/"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("dkron_token=good;") and all(
        f in cookie for f in ("HttpOnly", "SameSite=Strict", "Secure")
    )
    plain = app.test_client().post("/ui/login", data={"token": "good"})
    assert "Secure" not in plain.headers["Set-Cookie"]
    assert app.test_client().post("/ui/login", data={"token": "has space"}).status_code == 400
    # A login form posted from another site (login CSRF) is refused and sets no cookie.
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        forged = app.test_client().post("/ui/login", data={"token": "good"}, headers=headers)
        assert forged.status_code == 403 and "Set-Cookie" not in forged.headers, headers
    own = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
    assert app.test_client().post("/ui/login", data={"token": "good"}, headers=own).status_code == 303
    assert (
        app.test_client().post("/ui/login", data={"token": "good"}, headers={"Origin": "http://localhost"}).status_code
        == 303
    )


def test_static_files_are_cached_and_compressed():
    from types import SimpleNamespace

    from dkron.api.app import create_app

    client = create_app(SimpleNamespace(node_name="stub")).test_client()
    plain = client.get("/ui/static/htmx.min.js")
    packed = client.get("/ui/static/htmx.min.js", headers={"Accept-Encoding": "gzip, br"})
    assert plain.headers["Cache-Control"] == packed.headers["Cache-Control"] == "public, max-age=86400"
    assert packed.headers["Content-Encoding"] == "gzip" and len(packed.data) < len(plain.data) / 2
    assert packed.headers["Content-Type"].startswith("text/javascript")
    assert client.get("/ui/static/../__init__.py").status_code == 404
    assert client.get("/ui/static/htmx-LICENSE.txt").status_code == 200
