from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psutil
import pytest

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult
from dkron_executor_shell import ShellExecutor


class RecordingSink:
    """An OutputSink that remembers every chunk and when it arrived."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def write(self, chunk: bytes | str) -> None:
        data = chunk.encode() if isinstance(chunk, str) else chunk
        with self._lock:
            self.chunks.append((time.monotonic(), data))

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)

    @property
    def text(self) -> str:
        return self.data.decode()


def gone(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for a non-reaping init counts as gone)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def executor() -> ShellExecutor:
    return ShellExecutor()


@pytest.fixture(params=["execute", "gated"])
def run(
    request: pytest.FixtureRequest, executor: ShellExecutor
) -> Callable[..., tuple[ExecutionResult, RecordingSink]]:
    """Validate ``config`` like the core does, then run it; returns (result, sink).

    Every test runs twice: through ``execute`` (a run started at once), and through ``prepare``
    then ``start`` and ``wait`` (a run sent ahead of its second, spawned early behind the gate).
    A job must not be able to tell them apart. Where a run cannot be gated exactly, ``prepare``
    declines and the core calls ``execute``, as here.
    """
    mode = request.param

    def _run(
        config: dict[str, str], cancel: CancelToken | None = None, **fields: object
    ) -> tuple[ExecutionResult, RecordingSink]:
        sink = RecordingSink()
        req = ExecutionRequest(config=executor.validate(config), **{"job_name": "job1", "run_id": "run-1", **fields})  # type: ignore[arg-type]
        token = cancel or CancelToken()
        if mode == "gated":
            prepared = executor.prepare(req, sink, token)
            if prepared is not None:
                prepared.start()
                return prepared.wait(), sink
        return executor.execute(req, sink, token), sink

    return _run
