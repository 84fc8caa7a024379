"""``GET /metrics``: Prometheus text format (see ``dkron/metrics.py`` and docs/operations.md)."""

from __future__ import annotations

from flask import Blueprint, Response

from dkron.api.app import agent
from dkron.metrics import CONTENT_TYPE

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(agent().metrics.render(), mimetype=None, content_type=CONTENT_TYPE)
