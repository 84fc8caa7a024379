"""A placement for scheduler tests: every run goes to node "n1"; nothing runs, nothing is killed.
Tests subclass it and say what ``submit`` does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dkron.runner import RunSpec


class StubPlacement:
    def targets(self, job: dict[str, Any], avoid: Iterable[str] = ()) -> list[str]:
        return ["n1"]

    def submit(self, spec: RunSpec) -> str:
        raise NotImplementedError

    def running_jobs(self) -> set[str]:
        return set()

    def active(self) -> list[dict[str, Any]]:
        return []

    def kill(self, job: str, execution_id: str, reason: str) -> bool:
        return False
