"""Fixtures for the web UI's end-to-end tests: Debian's chromium, driven by Playwright, against a
real agent.

Browser downloads do not work here (nor in CI), so Playwright is pointed at the system chromium
(``DKRON_CHROMIUM`` overrides the path). A missing chromium fails the tests with the fix, never
skips them: CI installs it (``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dkron.testing import AgentProcess

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"


def chromium_path() -> str:
    path = os.environ.get("DKRON_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail(
            f"chromium not found at {path}: the UI tests drive Debian's chromium headless. "
            "Install it (apt-get install -y chromium) or set DKRON_CHROMIUM to a Chromium binary.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run scripts/dev setup (it is in the dev group)", pytrace=False)
    executable = chromium_path()
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def ui_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One real single-node server for the module (its pages are shared by the flows)."""
    agent = AgentProcess(tmp_path_factory.mktemp("ui") / "data")
    agent.start()
    yield agent
    agent.stop(timeout=15)


@pytest.fixture
def page(browser: Any, ui_agent: AgentProcess) -> Iterator[Any]:
    context = browser.new_context(base_url=ui_agent.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("dialog", lambda dialog: dialog.accept())  # confirmations (delete, kill)
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _screenshot(tab: Any, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(tab, "jobs")`` saves ``artifacts/screenshots/jobs.png`` (CI keeps it as an artifact)."""
    return _screenshot
