"""``dkron jobs ...``: manage jobs through any server's REST API (Dkron itself has no job CLI).

Every sub-command is a thin client of ``/v1``: it works against any server of the cluster (a
follower forwards writes to the leader), prints a human table by default and the API's JSON with
``--json``. Errors (server unreachable, a 4xx answer, a bad file) are one line on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from dkron.jobs import COMPUTED_FIELDS

DEFAULT_ADDRESS = "http://127.0.0.1:8080"
FINAL = ("success", "failed", "skipped", "missed", "lost")
#: Server-side defaults of fields a job file may leave out (anything falsy is the default otherwise).
FIELD_DEFAULTS = {"concurrency": "allow", "catchup": "latest", "notify_on": "always", "depends_on_status": "success"}


class CliError(Exception):
    """A failure to report as one line (``dkron jobs: <message>``) with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- HTTP client ---------------------------------------------------------------------------------
class Client:
    def __init__(self, address: str, token: str = "", timeout: float = 30.0) -> None:
        address = address.strip().rstrip("/")
        if "://" not in address:
            address = "http://" + address
        parsed = urllib.parse.urlsplit(address)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise CliError(f"--address must be an http(s) URL such as {DEFAULT_ADDRESS}, got {address!r}", 2)
        self.address = address
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, *, allow_404: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.address + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            if allow_404 and err.code == 404:
                return None
            raise CliError(f"{_error_text(err)} (HTTP {err.code} from {method} {path})") from None
        except urllib.error.URLError as err:
            reason = getattr(err.reason, "strerror", None) or str(err.reason)
            raise CliError(
                f"cannot reach the dkron server at {self.address}: {reason} "
                "(is it running? set --address or DKRON_ADDRESS)"
            ) from None
        except (TimeoutError, OSError) as err:
            raise CliError(f"no answer from the dkron server at {self.address}: {err}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError(f"the server at {self.address} did not answer with JSON ({method} {path})") from None


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        body = err.read()
        message = json.loads(body).get("error")
        if message:
            return str(message)
    except (ValueError, AttributeError, OSError):
        pass
    return err.reason if isinstance(err.reason, str) else "request failed"


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# -- files ---------------------------------------------------------------------------------------
def load_jobs_file(path: str) -> list[dict[str, Any]]:
    """Jobs from a YAML or JSON file: a list, a single job, ``{"jobs": [...]}``, or YAML documents."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]  # JSON is YAML too
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise CliError(f"{path} is not valid YAML or JSON: {detail}") from None
    jobs: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("jobs"), list) and "name" not in doc:
            jobs.extend(doc["jobs"])
        elif isinstance(doc, list):
            jobs.extend(doc)
        else:
            jobs.append(doc)
    for index, job in enumerate(jobs):
        if not isinstance(job, dict) or not isinstance(job.get("name"), str) or not job["name"]:
            raise CliError(f"{path}: job #{index + 1} must be a mapping with a name")
    if not jobs:
        raise CliError(f"{path} holds no jobs")
    return jobs


def parents_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same jobs, each parent (when in the list) before its children; otherwise file order."""
    by_name = {job["name"]: job for job in jobs}
    order: list[dict[str, Any]] = []
    placed: set[str] = set()

    def place(job: dict[str, Any], trail: tuple[str, ...]) -> None:
        name = job["name"]
        if name in placed:
            return
        if name in trail:
            raise CliError(f"dependency cycle among the jobs: {' -> '.join((*trail, name))}")
        parent = job.get("parent_job") or ""
        if parent in by_name:
            place(by_name[parent], (*trail, name))
        placed.add(name)
        order.append(job)

    for job in jobs:
        place(job, ())
    return order


# -- diffs ---------------------------------------------------------------------------------------
def settable(job: dict[str, Any]) -> dict[str, Any]:
    """The fields a user sets (no counters, timestamps or internal keys)."""
    return {k: v for k, v in job.items() if k not in COMPUTED_FIELDS and not k.startswith("_")}


def _loose(value: Any) -> Any:
    """The server stores config values as strings: compare ``5`` and ``"5"`` as equal."""
    if isinstance(value, dict):
        return {str(k): _loose(v) for k, v in value.items()}
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return ""
    return value


def looks_unchanged(stored: dict[str, Any], desired: dict[str, Any]) -> bool:
    """A cheap client-side check; when unsure it says "changed" and the server decides."""
    for key, value in settable(stored).items():
        if key not in desired:
            if value not in (None, "", False, 0, {}, [], FIELD_DEFAULTS.get(key)):
                return False
        elif _loose(desired[key]) != _loose(value):
            return False
    return all(key in stored or key in COMPUTED_FIELDS for key in desired)


def field_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    old, new = settable(before), settable(after)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


# -- output --------------------------------------------------------------------------------------
def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- sub-commands --------------------------------------------------------------------------------
def cmd_list(client: Client, args: argparse.Namespace) -> int:
    jobs = client.request("GET", "/v1/jobs") or []
    if args.json:
        _print_json(jobs)
        return 0
    rows = [
        [
            j["name"],
            j.get("schedule") or (f"(after {j['parent_job']})" if j.get("parent_job") else ""),
            "disabled" if j.get("disabled") else "enabled",
            j.get("status") or "untriggered",
            j.get("success_count", 0),
            j.get("error_count", 0),
            j.get("next") or "-",
        ]
        for j in jobs
    ]
    print(table(rows, ["NAME", "SCHEDULE", "STATE", "LAST", "OK", "FAILED", "NEXT"]))
    return 0


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    job = client.request("GET", f"/v1/jobs/{_quote(args.name)}")
    if args.json:
        _print_json(job)
    else:
        print(yaml.safe_dump(job, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip())
    return 0


def cmd_apply(client: Client, args: argparse.Namespace) -> int:
    results = []
    for desired in parents_first(load_jobs_file(args.file)):
        name = desired["name"]
        stored = client.request("GET", f"/v1/jobs/{_quote(name)}", allow_404=True)
        if stored is not None and looks_unchanged(stored, desired):
            results.append({"name": name, "result": "unchanged"})
            continue
        if args.dry_run:
            results.append({"name": name, "result": "created" if stored is None else "would update"})
            continue
        after = client.request("PUT", f"/v1/jobs/{_quote(name)}", desired)
        if stored is None:
            results.append({"name": name, "result": "created"})
            continue
        diff = field_diff(stored, after)
        results.append(
            {
                "name": name,
                "result": "updated" if diff else "unchanged",
                "changes": {k: {"from": a, "to": b} for k, (a, b) in diff.items()},
            }
        )
    if args.json:
        _print_json(results)
        return 0
    for item in results:
        verb = item["result"]
        if args.dry_run and verb == "created":
            verb = "would create"
        print(f"{item['name']}: {verb}")
        for key, change in item.get("changes", {}).items():
            print(f"    {key}: {_short(change['from'])} -> {_short(change['to'])}")
    return 0


def cmd_run(client: Client, args: argparse.Namespace) -> int:
    started = client.request("POST", f"/v1/jobs/{_quote(args.name)}/run")
    execution_id = started.get("execution_id", "")
    if not args.wait:
        if args.json:
            _print_json(started)
        else:
            print(f"started {args.name}: execution {execution_id} (run {started.get('run_id', '')})")
        return 0
    path = f"/v1/jobs/{_quote(args.name)}/executions/{_quote(execution_id)}"
    deadline = time.monotonic() + args.wait_timeout
    execution = None
    while time.monotonic() < deadline:
        execution = client.request("GET", path, allow_404=True)
        if execution and execution.get("status") in FINAL:
            break
        time.sleep(0.2)
    else:
        raise CliError(f"execution {execution_id} of {args.name} did not finish within {args.wait_timeout:g}s")
    assert execution is not None
    if args.json:
        _print_json(execution)
    else:
        print(f"{args.name}: execution {execution_id} {execution['status']} on {execution.get('node_name', '')}")
        if execution.get("output"):
            print(execution["output"].rstrip("\n"))
    return 0 if execution.get("status") == "success" else 1


def cmd_toggle(client: Client, args: argparse.Namespace) -> int:
    job = client.request("POST", f"/v1/jobs/{_quote(args.name)}/toggle")
    if args.json:
        _print_json(job)
    else:
        print(f"{args.name} is now {'disabled' if job.get('disabled') else 'enabled'}")
    return 0


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    job = client.request("DELETE", f"/v1/jobs/{_quote(args.name)}")
    if args.json:
        _print_json(job)
    else:
        print(f"deleted {args.name}")
    return 0


def cmd_executions(client: Client, args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({"_start": 0, "_end": args.limit, "_order": "DESC"})
    executions = client.request("GET", f"/v1/jobs/{_quote(args.name)}/executions?{query}") or []
    if args.json:
        _print_json(executions)
        return 0
    rows = [
        [
            e.get("id"),
            e.get("status"),
            e.get("node_name"),
            e.get("attempt"),
            e.get("started_at") or "-",
            e.get("finished_at") or "-",
            e.get("exit_code") if e.get("exit_code") is not None else "",
        ]
        for e in executions
    ]
    print(table(rows, ["ID", "STATUS", "NODE", "ATTEMPT", "STARTED", "FINISHED", "EXIT"]))
    return 0


def cmd_next(client: Client, args: argparse.Namespace) -> int:
    preview = client.request("GET", f"/v1/jobs/{_quote(args.name)}/next?n={args.count}") or {}
    if args.json:
        _print_json(preview)
        return 0
    times = preview.get("next") or []
    if not times:
        print(f"{args.name} has no upcoming runs")
        return 0
    zone = preview.get("timezone") or "UTC"
    print(table([[t.get("utc"), t.get("local")] for t in times], ["UTC", f"LOCAL ({zone})"]))
    return 0


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    jobs = client.request("GET", "/v1/jobs") or []
    text = json.dumps(jobs, indent=2, ensure_ascii=False) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    print(f"exported {len(jobs)} job(s) to {args.output}", file=sys.stderr)
    return 0


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    jobs = load_jobs_file(args.file)
    report = client.request("POST", "/v1/restore", jobs)
    if args.json:
        _print_json(report)
    else:
        for item in report.get("jobs", []):
            print(f"{item['name']}: {item['result']}")
        print(f"restored {report.get('restored', 0)} job(s)")
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "list": cmd_list,
    "get": cmd_get,
    "apply": cmd_apply,
    "run": cmd_run,
    "toggle": cmd_toggle,
    "delete": cmd_delete,
    "executions": cmd_executions,
    "next": cmd_next,
    "export": cmd_export,
    "import": cmd_import,
}


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_parsers(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=None,
        help=f"server URL (env DKRON_ADDRESS; default {DEFAULT_ADDRESS}); any server of the cluster will do",
    )
    common.add_argument("--token", default=None, help="API token, sent as 'Authorization: Bearer' (env DKRON_TOKEN)")
    common.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    common.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout in seconds (default 30)")
    jobs = sub.add_parser("jobs", help="list, apply, run, toggle, delete, export and import jobs over the REST API")
    cmds = jobs.add_subparsers(dest="jobs_command", metavar="SUBCOMMAND")
    cmds.add_parser("list", parents=[common], help="list jobs")
    for name, text in (
        ("get", "show one job"),
        ("toggle", "enable a disabled job or disable an enabled one"),
        ("delete", "delete a job (and its executions)"),
    ):
        cmds.add_parser(name, parents=[common], help=text).add_argument("name")
    apply = cmds.add_parser("apply", parents=[common], help="create or update jobs from a YAML/JSON file")
    apply.add_argument("-f", "--file", required=True, help="YAML or JSON file of jobs ('-' for stdin)")
    apply.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    run = cmds.add_parser("run", parents=[common], help="run a job now")
    run.add_argument("name")
    run.add_argument("--wait", action="store_true", help="wait for the execution; exit 1 unless it succeeded")
    run.add_argument("--wait-timeout", type=float, default=300.0, help="seconds to wait with --wait (default 300)")
    executions = cmds.add_parser("executions", parents=[common], help="a job's latest executions")
    executions.add_argument("name")
    executions.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")
    nxt = cmds.add_parser("next", parents=[common], help="preview a job's next run times")
    nxt.add_argument("name")
    nxt.add_argument("-n", "--count", type=_positive, default=10, help="how many (default 10)")
    export = cmds.add_parser("export", parents=[common], help="write every job as a Dkron-format backup (JSON)")
    export.add_argument("-o", "--output", default=None, help="file to write (default: stdout)")
    imp = cmds.add_parser("import", parents=[common], help="restore jobs from a backup (POST /v1/restore)")
    imp.add_argument("file", help="a backup from 'export' or GET /v1/jobs (JSON or YAML)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    command = COMMANDS.get(getattr(args, "jobs_command", None) or "")
    if command is None:
        print("usage: dkron jobs {" + ",".join(COMMANDS) + "} ... (dkron jobs -h for help)", file=sys.stderr)
        return 2
    try:
        client = Client(
            args.address or os.environ.get("DKRON_ADDRESS") or DEFAULT_ADDRESS,
            args.token if args.token is not None else os.environ.get("DKRON_TOKEN", ""),
            args.timeout,
        )
        return command(client, args)
    except CliError as exc:
        print(f"dkron jobs {args.jobs_command}: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `dkron jobs list | head`
        return 0
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:  # for tests and `python -m dkron.cli_jobs`
    parser = argparse.ArgumentParser(prog="dkron")
    add_parsers(parser.add_subparsers(dest="command"))
    return run(parser.parse_args(argv))
