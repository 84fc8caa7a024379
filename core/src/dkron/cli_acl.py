"""Token and audit commands: ``dkron acl bootstrap``, ``dkron acl token create|list|revoke``, ``dkron audit``.

They call a server's HTTP API (``--address``, default http://127.0.0.1:8080; env DKRON_ADDRESS)
with the token in ``--token`` or, better (flags show in ``ps``), the env var DKRON_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_ADDRESS = "http://127.0.0.1:8080"
TIMEOUT = 15.0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("DKRON_ADDRESS", DEFAULT_ADDRESS), help="server URL")
    parser.add_argument("--token", default=os.environ.get("DKRON_TOKEN", ""), help="API token (env DKRON_TOKEN)")
    parser.add_argument("--ca-file", default=os.environ.get("DKRON_CA_FILE", ""), help="CA to verify HTTPS with")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    acl = sub.add_parser("acl", help="API tokens (bootstrap, create, list, revoke)")
    acl_sub = acl.add_subparsers(dest="acl_command", metavar="COMMAND")
    _common(acl_sub.add_parser("bootstrap", help="create the first admin token (once per cluster)"))
    token = acl_sub.add_parser("token", help="manage tokens (admin)")
    token_sub = token.add_subparsers(dest="token_command", metavar="COMMAND")
    create = token_sub.add_parser("create", help="create a token; its secret is printed once")
    _common(create)
    create.add_argument("--name", default="", help="what the token is for")
    create.add_argument("--role", required=True, choices=("read", "run", "write", "admin"))
    create.add_argument("--jobs", default="", help="limit to jobs whose name matches this glob (e.g. 'team-a-*')")
    create.add_argument("--metadata", action="append", default=[], help="limit to jobs with metadata key=value")
    _common(token_sub.add_parser("list", help="list tokens (never their secrets)"))
    revoke = token_sub.add_parser("revoke", help="revoke a token by accessor")
    _common(revoke)
    revoke.add_argument("accessor")
    audit = sub.add_parser("audit", help="show the audit log, newest first")
    _common(audit)
    audit.add_argument("--action", default="", help="e.g. job.update, or job.* for every job action")
    audit.add_argument("--target", default="", help="job name or token accessor")
    audit.add_argument("--actor", default="", help="token accessor or name")
    audit.add_argument("--since", default="", help="RFC 3339 time")
    audit.add_argument("--limit", type=int, default=50)


class CliError(Exception):
    pass


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    url = args.address.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise CliError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {args.address}: {getattr(exc, 'reason', exc)}") from None


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _scope_text(scope: dict[str, Any]) -> str:
    parts = [f"jobs={scope['jobs']}"] if scope.get("jobs") else []
    parts += [f"{k}={v}" for k, v in sorted((scope.get("metadata") or {}).items())]
    return ",".join(parts) or "-"


def _show_new_token(token: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(token, indent=2))
        return
    print(f"AccessorID: {token['accessor']}")
    print(f"SecretID:   {token['secret']}")
    print(f"Role:       {token['role']}  Scope: {_scope_text(token.get('scope') or {})}")
    print("The secret is shown only now: store it safely (e.g. export DKRON_TOKEN=...).", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except CliError as exc:
        print(f"dkron {args.command}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "audit":
        query = {k: v for k, v in (("action", args.action), ("target", args.target), ("actor", args.actor)) if v}
        if args.since:
            query["since"] = args.since
        query["_end"] = str(max(1, args.limit))
        entries = _call(args, "GET", "/v1/audit?" + urllib.parse.urlencode(query))
        if args.json:
            print(json.dumps(entries, indent=2))
            return 0
        rows = [("Time", "Actor", "From", "Action", "Target", "Details")]
        for e in entries:
            actor = e["actor_name"] or e["actor"]
            rows.append((e["time"], actor, e["remote_addr"], e["action"], e["target"], json.dumps(e["details"])[:80]))
        _print_table(rows)
        return 0
    command = getattr(args, "acl_command", None)
    if command == "bootstrap":
        _show_new_token(_call(args, "POST", "/v1/acl/bootstrap"), args.json)
        return 0
    token_command = getattr(args, "token_command", None)
    if command == "token" and token_command == "create":
        metadata = {}
        for item in args.metadata:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--metadata {item!r}: expected key=value")
            metadata[key] = value
        scope = {k: v for k, v in (("jobs", args.jobs), ("metadata", metadata)) if v}
        body = {"name": args.name, "role": args.role, "scope": scope}
        _show_new_token(_call(args, "POST", "/v1/acl/tokens", body), args.json)
        return 0
    if command == "token" and token_command == "list":
        tokens = _call(args, "GET", "/v1/acl/tokens")
        if args.json:
            print(json.dumps(tokens, indent=2))
            return 0
        rows = [("AccessorID", "Name", "Role", "Scope", "Created", "Revoked")]
        rows += [
            (t["accessor"], t["name"], t["role"], _scope_text(t["scope"]), t["created_at"], t["revoked_at"] or "-")
            for t in tokens
        ]
        _print_table(rows)
        return 0
    if command == "token" and token_command == "revoke":
        _call(args, "DELETE", f"/v1/acl/tokens/{urllib.parse.quote(args.accessor, safe='')}")
        print(f"revoked {args.accessor}")
        return 0
    print("usage: dkron acl {bootstrap|token {create|list|revoke}} | dkron audit", file=sys.stderr)
    return 2
