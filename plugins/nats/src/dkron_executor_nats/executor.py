"""The ``nats`` executor: publishes ``message`` to ``subject`` and waits for the server to confirm it."""

from __future__ import annotations

import time
from collections.abc import Mapping

from dkron.contracts import CancelToken, ExecutionRequest, ExecutionResult, OutputSink
from dkron.pluginkit import guarded_execute
from dkron_executor_nats.config import NatsConfig, Server, parse_config, validate_config
from dkron_executor_nats.protocol import Cancelled, Connection, NatsError, TimedOut, open_connection

__all__ = ["CONNECT_SHARE_MIN", "NatsExecutor"]

#: With several servers, each connection attempt gets at least this long (or what is left).
CONNECT_SHARE_MIN = 2.0


def _fmt_seconds(value: float) -> str:
    return f"{value:g}s"


def _auth_hint(reason: str, cfg: NatsConfig, server: Server) -> str:
    if "authorization violation" not in reason.lower():
        return reason
    if not (cfg.user or cfg.token or server.user or server.token):
        return f"{reason}: the server requires credentials (set userName/password or token)"
    return f"{reason}: the server rejected the credentials"


class NatsExecutor:
    """Stateless, so one instance safely serves every execution on the agent concurrently."""

    #: Credentials: shown as ******** by the API, the audit log and notifications.
    secret_keys = frozenset({"password", "token"})

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        return validate_config(config)

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        return guarded_execute("nats", request, cancel, parse_config, lambda cfg: self._run(cfg, output, cancel))

    def _run(self, cfg: NatsConfig, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        def debug(line: str) -> None:
            if cfg.debug:
                output.write(f"nats: {line}\n")

        debug(
            f"servers={','.join(s.address for s in cfg.servers)} subject={cfg.subject} "
            f"bytes={len(cfg.payload)} auth={'user' if cfg.user else 'token' if cfg.token else 'none'} "
            f"timeout={_fmt_seconds(cfg.timeout)}"
        )
        started = time.monotonic()
        deadline = started + cfg.timeout
        failures: list[str] = []
        for index, server in enumerate(cfg.servers):
            now = time.monotonic()
            if now >= deadline:
                failures.append(f"{server.address}: not tried, timeout {_fmt_seconds(cfg.timeout)} exceeded")
                break
            left = len(cfg.servers) - index
            attempt_deadline = min(deadline, now + max(CONNECT_SHARE_MIN, (deadline - now) / left))
            try:
                conn = open_connection(
                    server,
                    user=cfg.user,
                    password=cfg.password,
                    token=cfg.token,
                    ca_file=cfg.ca_file,
                    cancel=cancel,
                    deadline=attempt_deadline,
                    log=debug,
                )
            except Cancelled as exc:
                return ExecutionResult(success=False, error=f"nats: killed: {exc}")
            except TimedOut as exc:
                spent = time.monotonic() - now
                failures.append(f"{server.address}: no answer after {spent:.1f}s while {exc}")
                continue
            except NatsError as exc:
                failures.append(f"{server.address}: {_auth_hint(str(exc), cfg, server)}")
                debug(failures[-1])
                continue
            with conn:
                return self._publish(conn, cfg, output, deadline)
        if len(failures) == 1:
            error = f"nats: {failures[0]}"
        else:
            error = f"nats: no server accepted the connection: {'; '.join(failures)}"
        return ExecutionResult(success=False, error=error)

    def _publish(self, conn: Connection, cfg: NatsConfig, output: OutputSink, deadline: float) -> ExecutionResult:
        address = conn.server.address
        max_payload = conn.info.get("max_payload")
        if isinstance(max_payload, int) and len(cfg.payload) > max_payload > 0:
            return ExecutionResult(
                success=False,
                error=f"nats: message is {len(cfg.payload)} bytes, more than the server's max_payload "
                f"{max_payload} ({address})",
            )
        conn.deadline = deadline  # the publish may use all the time that is left
        try:
            conn.publish(cfg.subject, cfg.payload)
        except Cancelled as exc:
            return ExecutionResult(success=False, error=f"nats: killed before the publish was confirmed: {exc}")
        except TimedOut as exc:
            return ExecutionResult(
                success=False, error=f"nats: timeout {_fmt_seconds(cfg.timeout)} exceeded {exc} ({address})"
            )
        except NatsError as exc:
            return ExecutionResult(success=False, error=f"nats: publish to {cfg.subject} failed: {exc} ({address})")
        output.write(f"published {len(cfg.payload)} bytes to {cfg.subject} on {address}\n")
        return ExecutionResult(success=True)
