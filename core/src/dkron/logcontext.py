"""Which run a log line is about: ``job`` and ``run_id`` on every line logged inside a run.

Code that works on a run wraps the work in ``with run_context(job, run_id):``; the filter
installed on the log handler copies the current values onto each record, so the JSON format
(``--log-format json``) has ``"job"`` and ``"run_id"`` keys and the text format a
``[job=... run=...]`` suffix, without passing them to every ``log`` call.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

__all__ = ["RunContextFilter", "about", "run_context"]

_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("dkron_job", default=None)
_run: contextvars.ContextVar[str | None] = contextvars.ContextVar("dkron_run_id", default=None)


@contextlib.contextmanager
def run_context(job: str, run_id: str = "") -> Iterator[None]:
    tokens = (_job.set(job), _run.set(run_id or None))
    try:
        yield
    finally:
        _run.reset(tokens[1])
        _job.reset(tokens[0])


def about(job: str, run_id: str = "") -> dict[str, str]:
    """``extra=`` for one log line about a run, logged outside its ``run_context``."""
    return {"job": job, "run_id": run_id} if run_id else {"job": job}


class RunContextFilter(logging.Filter):
    """Adds ``job``/``run_id`` (when set) and ``run_suffix`` (for text formats) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job, run_id = _job.get(), _run.get()
        if job is not None and not hasattr(record, "job"):
            record.job = job
        if run_id is not None and not hasattr(record, "run_id"):
            record.run_id = run_id
        parts = []
        if getattr(record, "job", None):
            parts.append(f"job={record.job}")
        if getattr(record, "run_id", None):
            parts.append(f"run={record.run_id}")
        record.run_suffix = f" [{' '.join(parts)}]" if parts else ""
        return True
