"""Real multi-process Dkron clusters on 127.0.0.1, for the cluster tests, chaos runs and benchmarks.

``Node`` wraps one ``python -m dkron.cli agent`` process (a server or an agent) with fixed ports,
so that ``restart()`` brings it back on the same data dir and the same addresses.
``LocalCluster`` starts ``servers`` servers (``--bootstrap-expect N``, ``--retry-join`` to all of
them) and any number of tagged agents, waits until the servers agree on a leader and
``/v1/members`` shows every node alive, and stops everything on ``close()`` (SIGTERM, then
SIGKILL, plus any job processes a killed node left behind).

Everything here goes through what a user has: the nodes' HTTP API, the ``dkron`` CLI, exit
codes and log files. Nothing is mocked.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dkron.testing import HttpResult, free_port

try:
    import psutil
except ImportError:  # a dev dependency: without it, job processes of killed nodes are not reaped
    psutil = None  # type: ignore[assignment]

#: Network errors a request to a node that is down (or frozen) can raise.
NETWORK_ERRORS = (OSError, urllib.error.URLError, ConnectionError, TimeoutError)

#: Agents (no ``--server``) started by default, with their tags.
DEFAULT_AGENTS = {"a1": {"pool": "web", "zone": "a"}, "a2": {"pool": "web", "zone": "b"}}


#: One HTTP answer (status, body, headers, ``json()``).
Http = HttpResult


def http(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0, token: str | None = None) -> Http:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Http(resp.status, resp.read(), dict(resp.headers))
    except urllib.error.HTTPError as err:
        return Http(err.code, err.read(), dict(err.headers))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (exceptions count as "not yet")."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except (AssertionError, *NETWORK_ERRORS, ValueError, KeyError) as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s (last error: {last_error!r})")
        time.sleep(interval)


def dkron_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``dkron <args>`` (this interpreter's) and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "dkron.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def parse_peers(text: str) -> list[dict[str, str]]:
    """The table ``dkron raft list-peers`` prints, as dicts keyed by its lower-cased header."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = [h.lower() for h in lines[0].split()]
    return [dict(zip(header, line.split(), strict=False)) for line in lines[1:]]


class Node:
    """One ``dkron agent`` process with fixed ports and data dir (so it can be restarted)."""

    def __init__(
        self,
        base: Path,
        name: str,
        *,
        server: bool,
        join: Iterable[str] = (),
        tags: Mapping[str, str] | None = None,
        bootstrap_expect: int = 3,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.server = server
        self.data_dir = base / f"data-{name}"
        self.log_path = base / f"{name}.log"
        self.rpc_port = free_port()
        self.raft_port = free_port() if server else None
        self.http_port = free_port() if server else None
        self.join = list(join)
        self.tags = dict(tags or {})
        self.bootstrap_expect = bootstrap_expect
        self.extra_args = ["--shutdown-timeout", "5s", *extra_args]
        # The caller's environment without DKRON_* options (they would override our flags).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DKRON_")}
        self.env.update(env or {})
        self.env["PYTHONUNBUFFERED"] = "1"
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.starts = 0
        #: API token sent with every request of this helper (clusters started with --acl-enabled).
        self.token: str | None = None
        self.stopped_on_purpose = False  # by kill9/stop (or `dkron leave`): not a crash
        #: How the last stop() went: {"rc", "seconds", "graceful"}.
        self.last_stop: dict[str, Any] = {}
        self._descendants: set[tuple[int, float]] = set()

    # -- addresses -----------------------------------------------------------------------------
    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    @property
    def url(self) -> str:
        assert self.server, f"{self.name} is an agent: it has no HTTP API"
        return f"http://127.0.0.1:{self.http_port}"

    def args(self) -> list[str]:
        args = [sys.executable, "-m", "dkron.cli", "agent", "--node-name", self.name]
        args += ["--data-dir", str(self.data_dir), "--rpc-port", str(self.rpc_port)]
        if self.server:
            args += ["--server", "--bootstrap-expect", str(self.bootstrap_expect)]
            args += ["--raft-port", str(self.raft_port), "--http-addr", f"127.0.0.1:{self.http_port}"]
        for addr in self.join:
            args += ["--retry-join", addr]
        for key, value in self.tags.items():
            args += ["--tag", f"{key}={value}"]
        return args + self.extra_args

    # -- process control -----------------------------------------------------------------------
    def start(self) -> Node:
        assert not self.running, f"{self.name} is already running"
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} {' '.join(self.args()[3:])}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.stopped_on_purpose = False
        self.frozen = False
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _remember_descendants(self) -> None:
        """Job processes (shell jobs run in their own session) outlive a SIGKILLed node."""
        if psutil is None or not self.running:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    self._descendants.add((child.pid, child.create_time()))

    def kill_descendants(self) -> None:
        if psutil is None:
            return
        for pid, created in sorted(self._descendants):
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created:  # still the same process, not a reused pid
                    for child in proc.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            child.kill()
                    proc.kill()
        self._descendants.clear()

    def freeze(self) -> None:
        assert self.running, f"{self.name} is not running"
        os.kill(self.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def kill9(self, with_jobs: bool = True) -> None:
        """SIGKILL the node, like a machine crash: by default its running job processes die too."""
        self._remember_descendants()
        self.stopped_on_purpose = True
        if self.running:
            self.thaw()
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)
        self.frozen = False
        if with_jobs:
            self.kill_descendants()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful), SIGKILL after ``timeout``; returns the exit code (see ``last_stop``)."""
        if self.proc is None:
            return None
        self._remember_descendants()
        self.stopped_on_purpose = True
        started, graceful = time.monotonic(), True
        if self.proc.poll() is None:
            self.thaw()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                graceful = False
                self.proc.kill()
                self.proc.wait(10)
        self.kill_descendants()
        self.last_stop = {
            "rc": self.proc.returncode,
            "seconds": round(time.monotonic() - started, 2),
            "graceful": graceful,
        }
        return self.proc.returncode

    def restart(self) -> Node:
        """Start again with the same data dir, ports and flags (after kill9 or stop)."""
        if self.running:
            self.stop()
        return self.start()

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    # -- HTTP (servers) ------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Http:
        return http(self.url + path, method, body, timeout, token=self.token)

    def get(self, path: str, timeout: float = 5.0) -> Http:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 5.0) -> Http:
        return self.request("POST", path, body, timeout=timeout)

    def delete(self, path: str, timeout: float = 5.0) -> Http:
        return self.request("DELETE", path, timeout=timeout)

    def healthy(self, timeout: float = 1.0) -> bool:
        if not self.running or self.frozen:
            return False
        try:
            return self.get("/health", timeout=timeout).status == 200
        except NETWORK_ERRORS:
            return False

    def __repr__(self) -> str:
        return f"<Node {self.name} {'server' if self.server else 'agent'} rpc={self.rpc_addr}>"


class LocalCluster:
    """``servers`` servers and some tagged agents; every node's ``--retry-join`` names all servers."""

    def __init__(
        self,
        base: Path,
        *,
        servers: int = 3,
        agents: Mapping[str, Mapping[str, str]] | None = None,
        server_args: Sequence[str] = (),
        agent_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        server_env: Mapping[str, str] | None = None,
        secret_scan: bool = True,
    ) -> None:
        base.mkdir(parents=True, exist_ok=True)
        if secret_scan:
            # As with dkron.testing's fixtures: each server flags responses holding a job's secret
            # (checked when the cluster closes). Benchmarks turn it off.
            env = {**(env or {}), "DKRON_TEST_SECRET_SCAN": "1"}
        self.base = base
        self.servers = [
            Node(
                base,
                f"s{i + 1}",
                server=True,
                bootstrap_expect=servers,
                extra_args=server_args,
                env={**(env or {}), **(server_env or {})},
            )
            for i in range(servers)
        ]
        joins = [s.rpc_addr for s in self.servers]
        for server in self.servers:
            server.join = joins
        agents = DEFAULT_AGENTS if agents is None else agents
        self.agents = [
            Node(base, name, server=False, join=joins, tags=tags, extra_args=agent_args, env=env)
            for name, tags in agents.items()
        ]
        self.retired: set[str] = set()  # nodes gone for good (left, removed from Raft)

    @property
    def nodes(self) -> list[Node]:
        return self.servers + self.agents

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout: float = 120.0) -> LocalCluster:
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)
        return self

    def heal(self, timeout: float = 90.0) -> None:
        """Thaw frozen nodes, start stopped ones (except the retired), wait until ready."""
        for node in self.nodes:
            if node.name in self.retired:
                continue
            node.thaw()
            if not node.running:
                if not node.stopped_on_purpose and node.proc is not None:
                    raise AssertionError(f"{node.name} died on its own ({node.proc.returncode}):\n{node.log()}")
                node.start()
        self.wait_ready(timeout)

    def stop_all(self, timeout: float = 40.0) -> dict[str, dict[str, Any]]:
        """Graceful stop of every node at once; returns each node's ``last_stop`` (or error)."""
        results: dict[str, dict[str, Any]] = {}

        def stop(node: Node) -> None:
            try:
                node.stop(timeout)
                results[node.name] = dict(node.last_stop)
            except Exception as exc:  # keep stopping the others
                results[node.name] = {"error": repr(exc)}

        threads = [threading.Thread(target=stop, args=(n,), daemon=True) for n in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 20)
        return results

    def kill_all(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill9()

    def close(self) -> None:
        self.stop_all(timeout=12)
        self.kill_all()  # whatever survived

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        leaks = [n.data_dir / "secret-leak.txt" for n in self.servers if (n.data_dir / "secret-leak.txt").exists()]
        if exc_type is None and leaks:
            raise AssertionError("a server sent a job's secret value in a response:\n" + leaks[0].read_text())

    # -- views ---------------------------------------------------------------------------------
    def live_servers(self) -> list[Node]:
        return [s for s in self.servers if s.running and not s.frozen and s.name not in self.retired]

    def leader_names(self, timeout: float = 2.0) -> dict[str, str | None]:
        """What ``GET /v1/leader`` names on every live server (None: no answer or no leader)."""
        names: dict[str, str | None] = {}
        for server in self.live_servers():
            try:
                answer = server.get("/v1/leader", timeout=timeout)
                names[server.name] = answer.json().get("Name") if answer.status == 200 else None
            except (*NETWORK_ERRORS, ValueError):
                names[server.name] = None
        return names

    def leader(self, timeout: float = 30.0, exclude: Iterable[str] = ()) -> Node:
        """The server every live server names as leader (waits for agreement; AssertionError if none)."""
        excluded = set(exclude)

        def agreed() -> Node | None:
            names = self.leader_names()
            values = set(names.values())
            if len(values) != 1 or None in values:
                return None
            name = values.pop()
            if name in excluded or name not in names:
                return None
            leader = self.node(name)
            return leader if leader.get("/v1/isleader", timeout=2).status == 200 else None

        return wait_for(agreed, timeout, f"leader agreement among {[s.name for s in self.live_servers()]}")

    def find_leader(self, timeout: float = 30.0) -> Node | None:
        """The server a majority of the answering servers name and that says it leads, or None.

        Unlike :meth:`leader`, it does not need every server to agree: for use during faults.
        """
        deadline = time.monotonic() + timeout
        while True:
            names = [name for name in self.leader_names(timeout=1.0).values() if name]
            if names:
                name, votes = collections.Counter(names).most_common(1)[0]
                candidate = next((s for s in self.live_servers() if s.name == name), None)
                if candidate is not None and votes * 2 > len(names):
                    with contextlib.suppress(*NETWORK_ERRORS):
                        if candidate.get("/v1/isleader", timeout=1.0).status == 200:
                            return candidate
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def followers(self) -> list[Node]:
        leader = self.leader()
        return [s for s in self.live_servers() if s is not leader]

    def members(self, server: Node | None = None) -> dict[str, dict[str, Any]]:
        server = server or self.leader()
        answer = server.get("/v1/members")
        assert answer.status == 200, answer
        return {m["Name"]: m for m in answer.json()}

    def wait_members(self, expected: dict[str, str], timeout: float = 30.0, server: Node | None = None) -> dict:
        """Wait until ``/v1/members`` shows each named node with the given statusText."""

        def check() -> dict | None:
            members = self.members(server or self.leader(timeout=5))
            if all(members.get(name, {}).get("statusText") == status for name, status in expected.items()):
                return members
            return None

        return wait_for(check, timeout, f"members {expected}")

    def wait_ready(self, timeout: float = 90.0) -> Node:
        """Every running node up: agreed leader, every server healthy, every node alive in members."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            exited = node.proc is not None and node.proc.poll() is not None
            if exited and node.name not in self.retired and not node.stopped_on_purpose:
                raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{node.log()}")
        try:
            leader = self.leader(timeout=max(1.0, deadline - time.monotonic()))
            wait_for(
                lambda: all(s.healthy() for s in self.live_servers()),
                max(1.0, deadline - time.monotonic()),
                "every server healthy",
            )
            self.wait_members(
                {n.name: "alive" for n in self.nodes if n.running and n.name not in self.retired},
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except AssertionError as exc:
            logs = "\n".join(f"--- {n.name}\n{n.log(1500)}" for n in self.nodes)
            raise AssertionError(f"cluster not ready: {exc}\n{logs}") from None
        return leader

    # -- jobs ----------------------------------------------------------------------------------
    def api(self) -> Node:
        return self.leader(timeout=15)

    def create_job(self, job: dict[str, Any], via: Node | None = None, query: str = "") -> Http:
        job = {"executor": "shell", **job}
        if job["executor"] == "shell":  # commands here use shell syntax ($VAR, loops, redirections)
            job["executor_config"] = {"shell": "true", **job.get("executor_config", {})}
        answer = (via or self.api()).post(f"/v1/jobs{query}", job, timeout=15)
        assert answer.status == 201, answer
        return answer

    def delete_job(self, name: str) -> None:
        with contextlib.suppress(*NETWORK_ERRORS, AssertionError):
            self.api().delete(f"/v1/jobs/{name}", timeout=10)

    def executions(self, job: str, via: Node | None = None) -> list[dict[str, Any]]:
        answer = (via or self.api()).get(f"/v1/jobs/{job}/executions?_sort=started_at&_order=ASC", timeout=10)
        assert answer.status == 200, answer
        return answer.json()
