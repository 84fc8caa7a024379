"""Suite-wide pytest policy.

In CI (``DKRON_REQUIRE_BROKERS=1``, set by ``.ci/run``) a skipped test is a failure: the tests
that need a real broker or tool skip with a reason on a developer's machine that lacks it, but
CI installs everything, so a skip there means something is missing and must not pass silently.
"""

from __future__ import annotations

import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("DKRON_REQUIRE_BROKERS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every dependency must be present: {reason}"
