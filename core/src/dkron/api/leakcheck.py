"""Test-only guard: flag any HTTP response that contains a job's secret value.

Enabled by the environment variable ``DKRON_TEST_SECRET_SCAN=1`` (the ``dkron.testing`` fixtures
set it for every agent they start). The server then knows the secret values of every job (from
the state it applies) and checks each response body it sends. A hit is logged and written to
``<data-dir>/secret-leak.txt``; the ``agent_factory`` fixture fails the test at teardown when the
file exists. So the whole suite, not only the tests about secrets, checks that no endpoint
(current or future) echoes a secret.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from flask import Response, request

from dkron.redact import secret_values
from dkron.store.queries import JobQuery

if TYPE_CHECKING:
    from dkron.agent import Agent

ENV = "DKRON_TEST_SECRET_SCAN"
LEAK_FILE = "secret-leak.txt"
log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class SecretScanner:
    def __init__(self, node: Agent) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._needles: set[bytes] = set()
        jobs, _ = node.reader.list_jobs(JobQuery())
        for job in jobs:
            self._add(job)
        node.state.listeners.append(self._on_applied)

    def _add(self, job: dict[str, Any]) -> None:
        values = secret_values(job, self.node.plugins.executors)
        with self._lock:
            for value in values:
                self._needles.add(value.encode())
                self._needles.add(json.dumps(value)[1:-1].encode())  # as it appears inside JSON

    def _on_applied(self, command: str, payload: dict[str, Any], result: Any) -> None:
        if command == "put_job":
            self._add(payload["job"])

    def check(self, response: Response) -> Response:
        if response.direct_passthrough or response.is_streamed:
            return response
        body = response.get_data()
        with self._lock:
            hit = next((needle for needle in self._needles if needle in body), None)
        if hit is not None:
            message = f"SECRET LEAK: the response to {request.method} {request.full_path} contains a job's secret value"
            log.error(message)
            with open(os.path.join(self.node.data_dir, LEAK_FILE), "a", encoding="utf-8") as f:
                f.write(message + "\n")
        return response
