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
