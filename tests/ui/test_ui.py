"""End-to-end: the web UI in headless chromium against a real agent.

Each flow is what an operator does by hand: create a job through the form (schedule preview and
validation messages included), see it run, watch a long job's output live and kill it, edit,
disable and delete it, and find one job among 10,000. Screenshots of every page are written to
``artifacts/screenshots/``.
"""

from __future__ import annotations

import concurrent.futures
import re
import time

from playwright.sync_api import expect

LONG_COMMAND = "for i in $(seq 1 200); do echo tick-$i; sleep 0.2; done"


def test_create_run_edit_disable_delete_through_the_form(page, ui_agent, screenshot):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/$"))
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_role("link", name="New job").click()
    expect(page.get_by_role("heading", name="New job")).to_be_visible()

    page.fill("#f-name", "ui-hello")
    # A schedule that does not parse: the API's message appears next to the field as you type.
    page.fill("#f-schedule", "61 * * * * *")
    expect(page.locator(".err[data-field=schedule]")).to_contain_text("can't parse job schedule")
    page.fill("#f-schedule", "0 30 9 * * *")
    page.fill("#f-timezone", "Asia/Tokyo")
    expect(page.locator("#schedule-preview li")).to_have_count(5)
    expect(page.locator("#schedule-preview li").first).to_contain_text("09:30:00+09:00")
    screenshot(page, "editor")

    # The executor's fields come from its declared schema; a missing command is refused by the
    # API and the message is shown next to the command field.
    page.select_option("#f-executor", "shell")
    page.get_by_role("button", name="Create job").first.click()
    expect(page.locator(".err[data-field='executor_config.command']")).to_contain_text("command")
    assert ui_agent.get("/v1/jobs/ui-hello").status == 404

    page.fill("#x-shell-command", "echo hello from the ui")
    page.fill("#f-metadata", "team=blue")
    page.get_by_role("button", name="Create job").first.click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/ui-hello$"))
    expect(page.locator("#next-runs tbody tr")).to_have_count(10)
    job = ui_agent.get("/v1/jobs/ui-hello").json()
    assert job["executor_config"] == {"command": "echo hello from the ui"}
    assert job["timezone"] == "Asia/Tokyo" and job["metadata"] == {"team": "blue"}

    # Run it and see the result.
    page.get_by_role("button", name="Run now").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/ui-hello/executions/"))
    expect(page.locator("h1 .badge")).to_have_text("success", timeout=15_000)
    expect(page.locator("#output")).to_contain_text("hello from the ui")
    screenshot(page, "execution")
    page.get_by_role("link", name="← ui-hello").click()
    expect(page.locator("#executions tbody tr")).to_have_count(1)
    expect(page.locator("#executions")).to_contain_text("success")
    screenshot(page, "job")

    # Edit: the form is filled with the stored job; the change is saved through PUT /v1/jobs/<name>.
    page.get_by_role("link", name="Edit").click()
    expect(page.locator("#x-shell-command")).to_have_value("echo hello from the ui")
    expect(page.locator("#f-name")).to_have_attribute("readonly", "")
    page.fill("#f-displayname", "Hello, edited")
    page.fill("#x-shell-command", "echo edited")
    page.get_by_role("button", name="Save changes").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Hello, edited")
    assert ui_agent.get("/v1/jobs/ui-hello").json()["executor_config"]["command"] == "echo edited"

    # The raw JSON editor is the alternative to the form.
    page.get_by_role("link", name="Edit").click()
    page.get_by_role("button", name="Edit as JSON").click()
    raw = page.locator("#raw-json")
    expect(raw).to_be_visible()
    assert '"displayname": "Hello, edited"' in raw.input_value()
    raw.fill(raw.input_value().replace('"retries": 0', '"retries": 2'))
    page.get_by_role("button", name="Save changes").first.click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/ui-hello$"))
    assert ui_agent.get("/v1/jobs/ui-hello").json()["retries"] == 2

    # Disable, then delete (the confirmation is accepted by the fixture).
    page.get_by_role("button", name="Disable").click()
    expect(page.locator("h1")).to_contain_text("disabled")
    assert ui_agent.get("/v1/jobs/ui-hello").json()["disabled"] is True
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs$"))
    assert ui_agent.get("/v1/jobs/ui-hello").status == 404


def test_live_output_of_a_long_job_then_kill(page, ui_agent, screenshot):
    body = {
        "name": "ui-long",
        "schedule": "@manually",
        "executor": "shell",
        "executor_config": {"command": LONG_COMMAND, "shell": "true"},
    }
    assert ui_agent.post("/v1/jobs", body).status == 201
    page.goto("/ui/jobs/ui-long")
    page.get_by_role("button", name="Run now").click()
    expect(page).to_have_url(re.compile(r"/executions/"))
    output = page.locator("#output")
    expect(page.locator("#exec-status")).to_contain_text("running")
    # Output arrives while the job runs, and keeps growing.
    expect(output).to_contain_text("tick-3", timeout=10_000)
    expect(output).to_contain_text("tick-8", timeout=10_000)
    assert "tick-200" not in output.inner_text()

    # The running execution is on the Busy page and the dashboard.
    busy = page.context.new_page()
    busy.goto("/ui/busy")
    expect(busy.locator("#busy")).to_contain_text("ui-long")
    screenshot(busy, "busy")
    busy.goto("/ui/")
    expect(busy.locator("#dash")).to_contain_text("ui-long")
    screenshot(busy, "dashboard")
    busy.close()

    page.get_by_role("button", name="Kill").click()
    # The stream ends with the execution; the page then shows the stored, failed record.
    expect(page.locator("h1 .badge")).to_have_text(re.compile("failed|lost"), timeout=15_000)
    executions = ui_agent.get("/v1/jobs/ui-long/executions").json()
    assert executions[0]["status"] in ("failed", "lost") and not executions[0]["success"]
    assert "tick-200" not in executions[0]["output"]


def test_find_one_job_among_10000(page, ui_agent, screenshot):
    jobs = [
        {
            "name": f"bulk-{i:05d}",
            "displayname": f"Bulk job {i}",
            # Yearly on January 1st at varied times: real next runs in the table, none during a test run.
            "schedule": f"{i % 60} {(i // 60) % 60} {(i // 3600) % 24} 1 1 *",
            "timezone": ("", "Europe/Madrid", "America/New_York")[i % 3],
            "executor": "shell",
            "executor_config": {"command": "true"},
            "metadata": {"ticket": f"TK{i * 7:06d}"},
            "tags": {"pool": "blue" if i % 2 else "green"},
        }
        for i in range(10_000)
    ]
    # POST /v1/restore in four parallel chunks (each under the 1 MiB body limit).
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda chunk: ui_agent.post("/v1/restore", chunk, timeout=300), [jobs[k::4] for k in range(4)])
        )
    assert [a.status for a in answers] == [200] * 4
    t0 = time.monotonic()
    page.goto("/ui/jobs")
    expect(page.locator("#jobs-total")).to_contain_text("job")
    total = int(page.locator("#jobs-total").inner_text().split()[0])
    assert total >= 10_000
    expect(page.locator("#jobs-table tbody tr")).to_have_count(50)
    assert time.monotonic() - t0 < 5
    screenshot(page, "jobs", full_page=False)

    # Keyboard: "/" focuses the search box; typing filters on the server as you type.
    page.locator("body").press("/")
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.type("TK048755")  # metadata value of bulk-06965
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    expect(page.locator("#jobs-table tbody")).to_contain_text("bulk-06965")
    expect(page).to_have_url(re.compile(r"q=TK048755"))
    page.fill("#q", "bulk-0999")
    expect(page.locator("#jobs-total")).to_contain_text("10 jobs")
    page.fill("#tag", "pool=green")
    expect(page.locator("#jobs-total")).to_contain_text("5 jobs")
    page.get_by_role("link", name="bulk-09990").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Bulk job 9990")

    # Paging and sorting are server-side too.
    page.goto("/ui/jobs?sort=name&order=desc")
    expect(page.locator("#jobs-table tbody tr").first).to_contain_text("ui-long")
    page.get_by_role("link", name="Next →").click()
    expect(page.locator("#jobs-table")).to_contain_text("page 2 of")


def test_bulk_disable_and_phone_layout(page, ui_agent, browser, screenshot):
    page.goto("/ui/jobs?q=bulk-0000")
    expect(page.locator("#jobs-total")).to_contain_text("10 jobs")
    page.check("#select-all")
    page.get_by_role("button", name="Disable", exact=True).click()
    expect(page.locator("#flash")).to_contain_text("disable: 10 job(s) done")
    assert ui_agent.get("/v1/jobs?q=bulk-0000&disabled=true").headers["X-Total-Count"] == "10"
    expect(page.locator("#jobs-table tbody .st-disabled")).to_have_count(10)

    phone = browser.new_context(base_url=ui_agent.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    tab = phone.new_page()
    tab.goto("/ui/jobs?q=bulk-0000")
    expect(tab.locator("#jobs-table tbody tr")).to_have_count(10)
    width = tab.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the page scrolls sideways on a phone ({width}px)"
    screenshot(tab, "jobs-phone")
    phone.close()


def test_other_pages_and_login(page, ui_agent, browser, screenshot):
    for path, name, text in [
        ("/ui/nodes", "nodes", "node1"),
        ("/ui/plugins", "plugins", "shell"),
    ]:
        page.goto(path)
        expect(page.locator("main")).to_contain_text(text)
        screenshot(page, name)
    expect(page.locator("main")).to_contain_text("command*")  # the shell executor's declared fields

    # The chain: parent and children link to each other.
    base = {"executor": "shell", "executor_config": {"command": "true"}}
    assert ui_agent.post("/v1/jobs", {"name": "chain-parent", "schedule": "@manually", **base}).status == 201
    assert ui_agent.post("/v1/jobs", {"name": "chain-child", "parent_job": "chain-parent", **base}).status == 201
    page.goto("/ui/jobs/chain-parent")
    page.get_by_role("link", name="chain-child").click()
    expect(page.locator("main")).to_contain_text("runs after its parent chain-parent succeeds")
    page.get_by_role("link", name="chain-parent").click()
    expect(page).to_have_url(re.compile(r"/ui/jobs/chain-parent$"))

    # Times are shown in the browser's zone, with UTC on hover.
    noon = {"name": "tz-noon", "schedule": "0 0 12 * * *", **base}
    assert ui_agent.post("/v1/jobs", noon).status == 201
    kolkata = browser.new_context(base_url=ui_agent.url, timezone_id="Asia/Kolkata")
    tab = kolkata.new_page()
    tab.goto("/ui/jobs/tz-noon")
    mine = tab.locator("#next-runs tbody tr").first.locator("time")
    expect(mine).to_contain_text("17:30:00")
    expect(mine).to_have_attribute("title", re.compile(r"T12:00:00Z \(UTC\)$"))
    kolkata.close()

    # An action the API refuses for lack of a token (as the API-token layer answers) shows the
    # message and the way to log in. The refusal is played by the browser's network layer here.
    page.goto("/ui/jobs/ui-long")
    page.route(
        "**/v1/jobs/ui-long/toggle",
        lambda route: route.fulfill(
            status=401, content_type="application/json", body='{"error": "an API token is required"}'
        ),
    )
    page.get_by_role("button", name="Disable").click()
    expect(page.locator("#flash")).to_contain_text("an API token is required")
    login = page.locator("#flash a")
    expect(login).to_have_attribute("href", "/ui/login?next=%2Fui%2Fjobs%2Fui-long")
    assert ui_agent.get("/v1/jobs/ui-long").json()["disabled"] is False

    page.goto("/ui/login?next=/ui/nodes")
    screenshot(page, "login")
    page.fill("#token", "s3cret-token")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/ui/nodes$"))
    cookie = next(c for c in page.context.cookies() if c["name"] == "dkron_token")
    assert cookie["value"] == "s3cret-token" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.goto("/ui/logout")
    expect(page).to_have_url(re.compile(r"/ui/login$"))
    assert not [c for c in page.context.cookies() if c["name"] == "dkron_token"]
