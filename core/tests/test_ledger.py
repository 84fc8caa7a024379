"""The run ledger: a run id claimed once, by batch or alone, stays claimed across a restart."""

from __future__ import annotations

from pathlib import Path

from dkron.ledger import RunLedger


def test_a_batch_claims_each_run_once_and_survives_a_restart(tmp_path) -> None:
    path = str(tmp_path / "started-runs.log")
    ledger = RunLedger(path)
    assert ledger.claim("a@1#1")
    assert ledger.claim_many(["b@1#1", "a@1#1", "c@1#1", "b@1#1"]) == [True, False, True, False]
    ledger.close()
    assert Path(path).read_text().split() == ["a@1#1", "b@1#1", "c@1#1"]  # one line per run, no repeats

    again = RunLedger(path)  # the agent restarted
    assert again.claim_many(["c@1#1", "d@1#1"]) == [False, True]
    assert not again.claim("a@1#1")
    again.close()


def test_a_reserved_run_is_refused_now_but_forgotten_by_a_restart_unless_committed(tmp_path) -> None:
    path = str(tmp_path / "started-runs.log")
    ledger = RunLedger(path)
    assert ledger.reserve_many(["held@1#1", "held@2#1"]) == [True, True]
    assert ledger.claim_many(["held@1#1", "now@1#1"]) == [False, True]  # a second dispatch meanwhile
    ledger.commit(["held@2#1"])  # it started
    # Compaction keeps what started and leaves out what only waits.
    ledger._compact()
    assert Path(path).read_text().split() == ["held@2#1", "now@1#1"]

    again = RunLedger(path)  # killed while held@1 waited: it never started
    assert again.claim_many(["held@1#1", "held@2#1", "now@1#1"]) == [True, False, False]
    again.close()
    ledger.close()
