"""The ``dkron`` command: agent, version, keygen, plugins."""

from __future__ import annotations

import os

# gRPC's C core logs every failed TLS handshake to stderr; our own log says it once, clearly.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import base64
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from dkron import __version__, cli_acl, cli_cluster, cli_jobs
from dkron.config import OPTIONS, ConfigError, env_name, resolve

log = logging.getLogger("dkron")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job", "run_id", "execution_id"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, as_json: bool) -> None:
    from dkron.logcontext import RunContextFilter

    handler = logging.StreamHandler()
    handler.addFilter(RunContextFilter())  # job and run id on every line logged about a run
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s%(run_suffix)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level.lower(), level.upper()))
    if level.lower() != "debug":
        logging.getLogger("pysyncobj").setLevel(logging.WARNING)
        logging.getLogger("waitress").setLevel(logging.WARNING)


def _add_agent_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="path to a dkron.yml config file (env DKRON_CONFIG)")
    for option in OPTIONS:
        flag = f"--{option.name}"
        help_text = f"{option.help} (env {env_name(option.name)}; default {option.default!r})"
        if option.kind == "bool":
            parser.add_argument(
                flag,
                dest=option.name,
                nargs="?",
                const="true",
                default=argparse.SUPPRESS,
                metavar="BOOL",
                help=help_text,
            )
        elif option.kind in ("list", "tags"):
            parser.add_argument(flag, dest=option.name, action="append", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=option.name, default=argparse.SUPPRESS, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dkron", description="Distributed, fault-tolerant cron.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    agent = sub.add_parser("agent", help="start a node (use --server for a server)")
    _add_agent_flags(agent)
    sub.add_parser("version", help="print the version")
    sub.add_parser("keygen", help="print a new random cluster key for --encrypt")
    plugins = sub.add_parser("plugins", help="list installed plugins as JSON")
    plugins.add_argument("--all", action="store_true", help="(kept for compatibility; every plugin is listed)")
    cli_cluster.add_parsers(sub)
    cli_jobs.add_parsers(sub)
    cli_acl.add_parsers(sub)
    return parser


def cmd_agent(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        config = resolve(flags, file=args.config)
    except ConfigError as exc:
        print(f"dkron agent: {exc}", file=sys.stderr)
        return 2
    setup_logging(config["log-level"], config["log-json"])
    from dkron.agent import Agent

    try:
        agent = Agent(config)
    except ValueError as exc:  # unusable TLS files or key
        print(f"dkron agent: {exc}", file=sys.stderr)
        return 2
    for name, info in agent.plugins.infos.items():
        if info.error:
            log.error("plugin %s is not available: %s", name, info.error)
    try:
        agent.start()  # on the main thread: pysyncobj's tick thread lives as long as its creator
    except (OSError, RuntimeError) as exc:
        print(f"dkron agent: cannot start: {exc}", file=sys.stderr)
        return 1
    if config["server"]:  # only servers serve the HTTP API
        warn_security(config)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.error("second signal: exiting now")
            os._exit(1)
        log.info("received %s: stopping gracefully", signal.Signals(signum).name)
        threading.Thread(target=agent.stop, name="shutdown").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.wait()
    # pysyncobj's tick thread ends with the thread that built the node (this one), and a stop still
    # commits the final execution records through Raft: never leave before the stop has destroyed
    # the node, even if wait() returned when the stop began (signal or POST /v1/leave).
    while agent.raft is not None and agent.raft.tick_thread_alive():
        time.sleep(0.05)
    return 0


def warn_security(config: dict[str, Any]) -> None:
    if not config["acl-enabled"]:
        log.warning(
            "ACLs ARE OFF: anyone who can reach %s can create jobs that run commands on this cluster; "
            "start with --acl-enabled after 'dkron acl bootstrap' (docs/security.md)",
            config["http-addr"],
        )
    elif not (config["encrypt"] or config["grpc-tls-ca"]):
        log.warning(
            "ACLs are on but gRPC/Raft are not authenticated (no --encrypt): local users can reach the "
            "cluster ports directly; set --encrypt with a key from 'dkron keygen'"
        )
    if not config["http-tls-cert"]:
        log.info("the HTTP API is plain HTTP: tokens cross the network in clear unless --http-tls-cert is set")


def cmd_plugins() -> int:
    from dkron.plugins import load_plugins

    print(json.dumps(load_plugins().listing(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "agent":
        return cmd_agent(args)
    if args.command == "version":
        print(f"dkron {__version__} (python {sys.version.split()[0]})")
        return 0
    if args.command == "keygen":
        print(base64.b64encode(secrets.token_bytes(32)).decode())
        return 0
    if args.command == "plugins":
        return cmd_plugins()
    if args.command in ("leave", "raft"):
        return cli_cluster.run(args)
    if args.command == "jobs":
        return cli_jobs.run(args)
    if args.command in ("acl", "audit"):
        return cli_acl.run(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
