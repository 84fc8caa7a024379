"""The recorder at shutdown: a stop is bounded even when nothing can commit.

A leader stopping while its followers stop too (a whole cluster shut down at once) used to
wait 20 s: the retry loop never gave up, so the flush and then the join each ran to their
timeout. Here the store is unavailable for good, as it is without a quorum.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dkron.recorder import Recorder
from dkron.store.raft import StoreUnavailable


def test_a_stop_without_quorum_drops_the_records_within_its_timeout(caplog) -> None:
    writes: list[float] = []

    def write(command: str, payload: dict[str, Any]) -> Any:
        writes.append(time.monotonic())
        raise StoreUnavailable("no leader")

    recorder = Recorder(write, flush_interval=0.01)
    recorder.start()
    recorder.add({"job_name": "j", "id": "1", "status": "success"})
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="dkron.recorder"):
        recorder.stop(timeout=1.0)
    took = time.monotonic() - started
    assert 0.9 <= took < 3.0, f"stop took {took:.2f}s with a 1 s timeout"
    assert "dropping 1 execution events at shutdown" in caplog.text
    assert len(writes) >= 2  # it did retry before giving up


def test_a_stop_commits_what_is_pending() -> None:
    committed: list[dict[str, Any]] = []
    recorder = Recorder(lambda command, payload: committed.extend(payload["executions"]), flush_interval=0.01)
    recorder.start()
    recorder.add({"job_name": "j", "id": "1", "status": "running"})
    recorder.add({"job_name": "j", "id": "1", "status": "success"})
    recorder.stop(timeout=5.0)
    assert [e["status"] for e in committed][-1] == "success"


def test_a_start_reported_after_the_result_does_not_replace_it() -> None:
    """A leader may hear a run's result (its stream) before its start (the StartRuns answer)."""
    committed: list[dict[str, Any]] = []
    recorder = Recorder(lambda command, payload: committed.extend(payload["executions"]), flush_interval=0.5)
    recorder.start()
    recorder.add({"job_name": "j", "id": "1", "status": "success"})
    recorder.add({"job_name": "j", "id": "1", "status": "running"})
    recorder.stop(timeout=5.0)
    assert [e["status"] for e in committed] == ["success"]


def test_a_stop_gives_up_at_once_when_told_nothing_can_commit_any_more() -> None:
    def write(command: str, payload: dict[str, Any]) -> Any:
        raise StoreUnavailable("no leader")

    recorder = Recorder(write, flush_interval=0.01)
    recorder.start()
    recorder.add({"job_name": "j", "id": "1", "status": "success"})
    started = time.monotonic()
    recorder.stop(timeout=10.0, abandon=lambda: True)  # e.g. the leader is gone too
    assert time.monotonic() - started < 2.0


def test_records_committed_at_once_go_in_bounded_commands_with_the_retention_settings() -> None:
    """A takeover after a gap commits one missed record per job: 5,000 jobs must not become
    one Raft command that holds every server's Raft thread past an election timeout."""
    commands: list[dict[str, Any]] = []
    recorder = Recorder(lambda command, payload: commands.append(payload), keep_per_job=7, max_batch=250)
    events = [{"job_name": f"j{i}", "id": "1-missed", "status": "missed"} for i in range(600)]
    recorder.commit_now(events)  # the recorder's thread is not started: this write is the caller's
    assert [len(c["executions"]) for c in commands] == [250, 250, 100]
    assert [e for c in commands for e in c["executions"]] == events
    assert {c["keep_per_job"] for c in commands} == {7}
