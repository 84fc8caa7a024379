from __future__ import annotations

import threading
import time
from collections.abc import Callable

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


@pytest.fixture
def executor() -> ShellExecutor:
    return ShellExecutor()


@pytest.fixture
def run(executor: ShellExecutor) -> Callable[..., tuple[ExecutionResult, RecordingSink]]:
    """Validate ``config`` like the core does, then execute it; returns (result, sink)."""

    def _run(
        config: dict[str, str], cancel: CancelToken | None = None, **request: object
    ) -> tuple[ExecutionResult, RecordingSink]:
        sink = RecordingSink()
        fields: dict[str, object] = {"job_name": "job1", "run_id": "run-1", **request}
        req = ExecutionRequest(config=executor.validate(config), **fields)  # type: ignore[arg-type]
        return executor.execute(req, sink, cancel or CancelToken()), sink

    return _run
