"""Flask application factory: JSON errors everywhere, request size cap, Dkron's response headers."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

if TYPE_CHECKING:
    from dkron.agent import Agent

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # a job is a few KB; a restore of many jobs fits easily


class ApiError(Exception):
    """Raised by handlers: becomes ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def agent() -> Agent:
    return current_app.config["DKRON_AGENT"]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    indent = 2 if "pretty" in request.args else None
    body = json.dumps(data, indent=indent, ensure_ascii=False)
    return Response(body + ("\n" if indent else ""), status=status, mimetype="application/json", headers=headers)


def create_app(node: Agent) -> Flask:
    from dkron.api import acl, auth, executions, jobs, leakcheck, metrics, preview, stream, system, ui

    app = Flask(__name__, static_folder=None)
    app.config["DKRON_AGENT"] = node
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    for blueprint in (system.bp, jobs.bp, executions.bp, preview.bp, stream.bp, ui.bp, metrics.bp, acl.bp):
        app.register_blueprint(blueprint)
    app.before_request(auth.authorize)  # every route: token, role and job scope (api/auth.py)
    allowed_origins = set(getattr(node, "config", {}).get("cors-allowed-origins") or ())
    scanner = leakcheck.SecretScanner(node) if leakcheck.enabled() else None

    @app.after_request
    def _whom(response: Response) -> Response:
        response.headers["X-Whom"] = node.node_name
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        origin = request.headers.get("Origin")
        # CORS is off unless origins are configured: browsers then refuse other sites' reads.
        if origin and ("*" in allowed_origins or origin in allowed_origins):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, X-Dkron-Token, Content-Type"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
            response.headers["Access-Control-Expose-Headers"] = "X-Total-Count, Location"
        if scanner is not None:
            scanner.check(response)
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return json_response({"error": str(exc), **exc.extra}, exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        messages = {
            404: f"not found: {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"request body too large (limit {MAX_BODY_BYTES} bytes)",
            431: "request headers too large",
        }
        response = json_response({"error": messages.get(exc.code or 500, exc.description)}, exc.code or 500)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))  # required on a 405 (RFC 9110)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Never a stack trace in a response: log it, answer with a plain message.
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response({"error": "internal error; see the server log"}, 500)

    return app


def read_json() -> Any:
    """The request body as JSON, or a 400 that says what is wrong with it."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError("request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError("request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError("JSON nested too deeply") from None
