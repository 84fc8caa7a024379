"""Turning a finished execution record into an ``ExecutionDone`` request (the fallback path)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dkron.proto import cluster_pb2


def _ms(iso: str | None) -> int:
    if not iso:
        return 0
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def done_request(record: dict[str, Any], node_name: str) -> cluster_pb2.ExecutionDoneRequest:
    request = cluster_pb2.ExecutionDoneRequest(
        execution_id=record["id"],
        job_name=record["job_name"],
        run_id=record.get("run_id", ""),
        node_name=record.get("node_name") or node_name,
        attempt=record.get("attempt", 1),
        scheduled_at_ms=_ms(record.get("scheduled_at")),
        started_at_ms=_ms(record.get("started_at")),
        finished_at_ms=_ms(record.get("finished_at")),
        success=bool(record.get("success")),
        error=record.get("error") or "",
        output_tail=(record.get("output") or "").encode("utf-8", "replace"),
        output_truncated=bool(record.get("output_truncated")),
        output_bytes_total=int(record.get("output_bytes") or 0),
        group=int(record.get("group") or 0),
        kind=record.get("kind") or "",
    )
    if record.get("exit_code") is not None:
        request.exit_code = int(record["exit_code"])
    return request
