"""One node: wires plugins, the replicated store, the runner, the scheduler and the HTTP API."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from dkron import __version__
from dkron.config import split_addr
from dkron.jobs import format_time
from dkron.ledger import RunLedger
from dkron.plugins import PluginHost, load_plugins
from dkron.recorder import Recorder
from dkron.runner import Runner
from dkron.scheduler import Scheduler
from dkron.store.queries import Reader
from dkron.store.raft import RaftConfig, RaftNode
from dkron.store.state import StateMachine

log = logging.getLogger(__name__)

JOB_COMMANDS = ("put_job", "delete_job", "set_disabled")


class Agent:
    def __init__(self, config: dict[str, Any], plugins: PluginHost | None = None) -> None:
        self.config = config
        self.node_name: str = config["node-name"]
        self.started_at = time.time()
        self.plugins = plugins or load_plugins(config)
        self.data_dir = os.path.abspath(config["data-dir"])
        self.raft: RaftNode | None = None
        self.http_server: Any = None
        self._stopped = threading.Event()
        self._done = threading.Event()
        self._paused_submissions = False

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.config["server"]:
            raise RuntimeError("client agents (without --server) join a cluster; that arrives with clustering")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the journal is pickles: whoever can write it can run code
        db_path = os.path.join(self.data_dir, "state.db")
        self.state = StateMachine(db_path)
        self.reader = Reader(db_path)
        self.recorder = Recorder(
            self.write,
            keep_per_job=self.config["retention-count"],
            keep_seconds=self.config["retention-age-seconds"],
        )
        self.runner = Runner(
            self.node_name,
            self.plugins.executors,
            self.plugins.processors,
            self.recorder.add,
            max_concurrent=self.config["max-concurrent-runs"],
            max_output_bytes=self.config["max-output-bytes"],
            ledger=RunLedger(os.path.join(self.data_dir, "started-runs.log")),
        )
        self.scheduler = Scheduler(
            self.reader,
            self.write,
            self.runner,
            self.recorder.add,
            node_name=self.node_name,
            catchup_window=self.config["catchup-window"],
        )
        self.state.listeners.append(self._on_applied)
        # Before Raft starts: a paused cluster must not run catch-ups when it comes back.
        self.scheduler.paused = bool(self.reader.meta("scheduling_paused", False))
        self.scheduler.start()
        self.recorder.start()
        raft_addr = f"{self.config['advertise-addr'] or self.config['bind-addr']}:{self.config['raft-port']}"
        raft_config = RaftConfig(data_dir=self.data_dir, self_addr=raft_addr, password=self.config["encrypt"] or None)
        # Tests and chaos runs force frequent log compaction to exercise crash-during-snapshot.
        if os.environ.get("DKRON_RAFT_COMPACTION_ENTRIES"):
            raft_config.compaction_min_entries = int(os.environ["DKRON_RAFT_COMPACTION_ENTRIES"])
        self.raft = RaftNode(
            raft_config,
            self.state,
            on_state_change=self.scheduler.set_leader,
        )
        self._start_http()
        log.info(
            "dkron %s node %s serving HTTP on %s (raft %s)",
            __version__,
            self.node_name,
            self.config["http-addr"],
            raft_addr,
        )

    def _start_http(self) -> None:
        from waitress.server import create_server

        from dkron.api.app import create_app

        host, port = split_addr(self.config["http-addr"], "http-addr")
        app = create_app(self)
        self.http_server = create_server(
            app,
            host=host,
            port=port,
            threads=16,
            ident="dkron",
            channel_timeout=60,
            clear_untrusted_proxy_headers=True,
        )
        threading.Thread(target=self.http_server.run, name="http", daemon=True).start()

    def _on_applied(self, command: str, payload: dict[str, Any], result: Any) -> None:
        # Runs on the Raft tick thread after each apply: only hand over, never block.
        if command in JOB_COMMANDS:
            name = payload["job"]["name"] if command == "put_job" else payload["name"]
            self.scheduler.job_changed(name)
        elif command == "set_meta" and payload.get("key") == "scheduling_paused":
            self.scheduler.paused = bool(payload["value"])

    # -- operations used by the API ----------------------------------------------------------
    def write(self, command: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        assert self.raft is not None
        return self.raft.write(command, payload, timeout=timeout)

    @property
    def is_leader(self) -> bool:
        return bool(self.raft and self.raft.is_leader)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.raft is not None and (self.raft.is_leader or self.raft.leader_addr()):
                return True
            time.sleep(0.02)
        return False

    def members(self) -> list[dict[str, Any]]:
        host = self.config["advertise-addr"] or self.config["bind-addr"]
        return [
            {
                "Name": self.node_name,
                "id": self.node_name,
                "Addr": host,
                "Port": self.config["rpc-port"],
                "Tags": {
                    **self.config["tag"],
                    "role": "dkron",
                    "server": str(self.config["server"]).lower(),
                    "version": __version__,
                    "rpc_addr": f"{host}:{self.config['rpc-port']}",
                },
                "Status": 1,
                "statusText": "alive",
                "leader": self.is_leader,
            }
        ]

    def now_iso(self) -> str:
        from datetime import UTC, datetime

        return format_time(datetime.now(UTC)) or ""

    @property
    def submissions_paused(self) -> bool:
        return self._paused_submissions

    def set_submissions_paused(self, paused: bool) -> None:
        self._paused_submissions = paused

    # -- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Graceful stop: no new runs, let running ones finish (bounded), record, leave."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping: waiting up to %.0fs for running executions", self.config["shutdown-timeout"])
        self.scheduler.set_leader(False)
        self.runner.shutdown(self.config["shutdown-timeout"])
        self.recorder.stop(timeout=10)
        self.scheduler.stop()
        if self.http_server is not None:
            self.http_server.close()
        if self.raft is not None:
            self.raft.destroy_synchronous()  # flushes the journal before the process exits
        self.runner.ledger.close()
        log.info("stopped")
        self._done.set()

    def wait(self) -> None:
        """Block until :meth:`stop` has finished (records committed, Raft flushed)."""
        self._done.wait()
