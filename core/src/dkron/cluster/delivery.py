"""Turning a finished execution record into an ``ExecutionDone`` request (the fallback path)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dkron.proto import cluster_pb2


def _ms(iso: str | None) -> int:
    if not iso:
        return 0
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def result_message_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A final record's result, as the fields shared by ``ExecutionFinished`` (on a WatchRuns
    stream) and ``ExecutionDoneRequest`` (the fallback), so both paths store the same thing.
    ``output_bytes_total`` counts what the executor wrote (0 if nothing, even when an error or a
    processor put text in the output)."""
    fields = {
        "started_at_ms": _ms(record.get("started_at")),
        "finished_at_ms": _ms(record.get("finished_at")),
        "success": bool(record.get("success")),
        "error": record.get("error") or "",
        "output_tail": (record.get("output") or "").encode("utf-8", "replace"),
        "output_truncated": bool(record.get("output_truncated")),
        "output_bytes_total": int(record.get("output_bytes") or 0),
    }
    if record.get("exit_code") is not None:
        fields["exit_code"] = int(record["exit_code"])
    return fields


def done_request(record: dict[str, Any], node_name: str) -> cluster_pb2.ExecutionDoneRequest:
    return cluster_pb2.ExecutionDoneRequest(
        execution_id=record["id"],
        job_name=record["job_name"],
        run_id=record.get("run_id", ""),
        node_name=record.get("node_name") or node_name,
        attempt=record.get("attempt", 1),
        scheduled_at_ms=_ms(record.get("scheduled_at")),
        group=int(record.get("group") or 0),
        kind=record.get("kind") or "",
        **result_message_fields(record),
    )
