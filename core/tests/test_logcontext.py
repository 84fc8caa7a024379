"""Log lines about a run carry its job and run id, inside a run context or with ``extra=about(...)``."""

from __future__ import annotations

import io
import logging

from dkron.logcontext import RunContextFilter, about, run_context


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RunContextFilter())
    handler.setFormatter(logging.Formatter("%(message)s%(run_suffix)s"))
    logger = logging.getLogger("test.logcontext")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_lines_name_their_run_from_the_context_or_from_extra():
    log, out = _capture()
    with run_context("backup", "backup@1"):
        log.info("inside")
    log.warning("lost", extra=about("backup", "backup@2"))
    log.error("bad schedule", extra=about("backup"))
    log.info("about nothing")
    assert out.getvalue().splitlines() == [
        "inside [job=backup run=backup@1]",
        "lost [job=backup run=backup@2]",
        "bad schedule [job=backup]",
        "about nothing",
    ]
