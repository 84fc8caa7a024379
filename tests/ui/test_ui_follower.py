"""Live output and kill through a follower: the browser talks only to a server that does not lead.

The run is forwarded to the leader, which dispatches it to an agent; the agent streams output to
the leader; the follower's event stream reads the leader's live output over gRPC. The operator
sees the output grow and kills the execution, all from the follower's pages.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from dkron.localcluster import LocalCluster

LONG_COMMAND = "for i in $(seq 1 300); do echo step-$i; sleep 0.2; done"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with LocalCluster(tmp_path_factory.mktemp("ui-cluster"), agents={"a1": {"pool": "ui"}}) as c:
        c.start(timeout=120)
        yield c


def test_live_output_and_kill_through_a_follower(browser, cluster, screenshot):
    follower = cluster.followers()[0]
    job = {"name": "far-long", "schedule": "@manually", "tags": {"pool": "ui"}}
    cluster.create_job({**job, "executor_config": {"command": LONG_COMMAND}}, via=follower)
    context = browser.new_context(base_url=follower.url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        page.goto("/ui/jobs/far-long")
        expect(page.locator("header")).to_contain_text("follower")
        page.get_by_role("button", name="Run now").click()
        expect(page).to_have_url(re.compile(r"/ui/jobs/far-long/executions/"))
        output = page.locator("#output")
        expect(output).to_contain_text("step-3")
        expect(output).to_contain_text("step-10")
        assert "step-300" not in output.inner_text()
        expect(page.locator("main")).to_contain_text("a1")  # it runs on the agent, not on this server
        screenshot(page, "execution-live-follower")
        page.get_by_role("button", name="Kill").click()
        expect(page.locator("h1 .badge")).to_have_text(re.compile("failed|lost"), timeout=20_000)
        execution = follower.get("/v1/jobs/far-long/executions").json()[0]
        assert execution["node_name"] == "a1" and not execution["success"]
        assert "step-300" not in execution["output"]
    finally:
        context.close()
