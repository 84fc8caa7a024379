"""Notification templates: Dkron's variables and Go spelling, Jinja2 in a sandbox, webhook headers."""

from __future__ import annotations

import pytest

from dkron.notify import templates, webhook

EXECUTIONS = [
    {
        "id": "1-a1",
        "run_id": "job@1",
        "job_name": "job",
        "node_name": "a1",
        "group": 1,
        "attempt": 1,
        "status": "success",
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:02.000Z",
        "output": "one\n",
    },
    {
        "id": "1-a2",
        "run_id": "job@1",
        "job_name": "job",
        "node_name": "a2",
        "group": 1,
        "attempt": 1,
        "status": "failed",
        "started_at": "2026-01-01T00:00:01.000Z",
        "finished_at": "2026-01-01T00:00:03.000Z",
        "output": "two\n",
    },
]


def values(executions=EXECUTIONS, finished=True):
    return templates.variables({"name": "job", "owner": "ops"}, executions, reporting_node="s1", finished=finished)


def test_variables_of_a_run_over_two_nodes():
    v = values()
    assert v["JobName"] == "job" and v["ReportingNode"] == "s1" and v["RunId"] == "job@1"
    assert v["StartTime"] == "2026-01-01T00:00:00.000Z" and v["FinishedAt"] == "2026-01-01T00:00:03.000Z"
    assert v["Success"] == "false" and v["Status"] == "failed"  # one node failed: the run failed
    assert v["NodeName"] == "a1,a2"
    assert v["Output"] == "[a1]\none\n\n[a2]\ntwo\n\n"
    assert v["Report"].startswith("Executed: job\nReporting node: s1\nStart time: 2026-01-01T00:00:00.000Z\n")
    assert (
        "\t[Node]: a2 [Start]: 2026-01-01T00:00:01.000Z [End]: 2026-01-01T00:00:03.000Z [Success]: false\n"
        in (v["Report"])
    )


def test_pre_run_variables_have_no_outcome():
    v = values(EXECUTIONS[:1], finished=False)
    assert v["Success"] == "" and v["FinishedAt"] == "" and v["Output"] == "" and v["Status"] == "running"


def test_go_spelling_and_jinja_both_render():
    text = templates.render("{{.JobName}} on {{ .NodeName }}: {{ Success }} {{ Job.owner }}", values())
    assert text == "job on a1,a2: false ops"


def test_the_sandbox_refuses_internals():
    text = templates.render("{{ JobName.__class__.__mro__[1].__subclasses__() }}", values())
    assert text.startswith("Failed to render template:")


def test_an_unknown_variable_is_reported_not_rendered_empty():
    assert templates.render("{{ Nope }}", values()).startswith("Failed to render template:")


def test_template_syntax_is_checked():
    with pytest.raises(templates.TemplateError):
        templates.check_template("{% if %}")
    templates.check_template("{{.JobName}} {% if Success == 'true' %}ok{% endif %}")


def test_default_payload_is_json():
    import json

    body = json.loads(templates.default_payload(values()))
    assert body["job"] == "job" and body["success"] is False and body["node"] == "a1,a2"


def test_headers_split_at_the_first_colon():
    assert webhook.parse_headers(["Authorization: Bearer a:b", "X-Empty:"], "h") == {
        "Authorization": "Bearer a:b",
        "X-Empty": "",
    }
    for bad in ("NoColon", ": value", "Bad Name: x"):
        with pytest.raises(ValueError, match="expected 'Name: value'"):
            webhook.parse_headers([bad], "webhook-headers")
