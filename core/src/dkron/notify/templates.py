"""Notification templates: Dkron's variables, rendered by Jinja2 in a sandbox.

Variables (Dkron's names): ``Report``, ``JobName``, ``ReportingNode``, ``StartTime``,
``FinishedAt``, ``Success`` ("true"/"false"), ``NodeName``, ``Output``; plus ``Status``, ``RunId``,
``Attempt``, ``Job`` (the job as JSON) and ``Executions`` (one dict per node execution).

Dkron's Go-template spelling ``{{.JobName}}`` is accepted too: a plain ``{{.Name}}`` is read as
``{{ Name }}``, so existing ``webhook-payload`` values keep working. The sandbox forbids
attribute access to internals (no ``__class__`` tricks): a template comes from the operator's
config, but it renders data that job owners control (output).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["TemplateError", "build_report", "check_template", "render", "variables"]

_GO_FIELD = re.compile(r"\{\{-?\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}")
_env = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)
_env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
#: Largest output put in a notification (its tail).
MAX_OUTPUT_CHARS = 256_000


def _translate(template: str) -> str:
    return _GO_FIELD.sub(lambda m: "{{ " + m.group(1) + " }}", template)


def check_template(template: str) -> None:
    """Raise ``TemplateError`` (with a line number) if ``template`` cannot be parsed."""
    _env.parse(_translate(template))


def render(template: str, values: Mapping[str, Any]) -> str:
    """Render; a template error becomes the text Dkron would send instead of raising."""
    try:
        return _env.from_string(_translate(template)).render(**values)
    except TemplateError as exc:
        return f"Failed to render template: {exc}"


def _tail(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else text[-MAX_OUTPUT_CHARS:]


def build_report(job: str, reporting_node: str, executions: Sequence[Mapping[str, Any]], success: bool) -> str:
    """Dkron's ``.Report`` layout, one summary then one line per node execution of the run."""
    first = executions[0] if executions else {}
    lines = [
        f"Executed: {job}",
        f"Reporting node: {reporting_node}",
        f"Start time: {first.get('started_at') or ''}",
        f"End time: {first.get('finished_at') or ''}",
        f"Success: {'true' if success else 'false'}",
        f"Node: {first.get('node_name') or ''}",
        f"Output: {_tail(first.get('output') or '')}",
        f"Execution group: {first.get('group') or ''}",
    ]
    report = "\n".join(lines) + "\n"
    for ex in executions:
        report += (
            f"\t[Node]: {ex.get('node_name') or ''} [Start]: {ex.get('started_at') or ''} "
            f"[End]: {ex.get('finished_at') or ''} [Success]: {'true' if ex.get('status') == 'success' else 'false'}\n"
        )
    return report


def variables(
    job: Mapping[str, Any],
    executions: Sequence[Mapping[str, Any]],
    *,
    reporting_node: str,
    finished: bool,
) -> dict[str, Any]:
    """The template variables for one run (``finished=False`` for the pre-run webhook)."""
    started = [ex["started_at"] for ex in executions if ex.get("started_at")]
    ended = [ex["finished_at"] for ex in executions if ex.get("finished_at")]
    success = finished and bool(executions) and all(ex.get("status") == "success" for ex in executions)
    if len(executions) == 1:
        output = executions[0].get("output") or ""
    else:
        output = "".join(f"[{ex.get('node_name')}]\n{ex.get('output') or ''}\n" for ex in executions)
    status = ("success" if success else "failed") if finished else "running"
    first = executions[0] if executions else {}
    return {
        "JobName": job["name"],
        "ReportingNode": reporting_node,
        "StartTime": min(started) if started else "",
        "FinishedAt": (max(ended) if ended else "") if finished else "",
        "Success": ("true" if success else "false") if finished else "",
        "NodeName": ",".join(str(ex.get("node_name") or "") for ex in executions),
        "Output": _tail(output) if finished else "",
        "Report": build_report(job["name"], reporting_node, executions, success) if finished else "",
        "Status": status,
        "RunId": first.get("run_id") or "",
        "Attempt": max((int(ex.get("attempt") or 1) for ex in executions), default=1),
        "Job": dict(job),
        "Executions": [dict(ex) for ex in executions],
    }


def default_payload(values: Mapping[str, Any]) -> str:
    """The webhook body when no ``*-payload`` template is configured: the run as JSON."""
    return json.dumps(
        {
            "job": values["JobName"],
            "run_id": values["RunId"],
            "status": values["Status"],
            "success": values["Success"] == "true" if values["Success"] else None,
            "attempt": values["Attempt"],
            "node": values["NodeName"],
            "reporting_node": values["ReportingNode"],
            "started_at": values["StartTime"] or None,
            "finished_at": values["FinishedAt"] or None,
            "output": values["Output"],
        },
        ensure_ascii=False,
    )
