"""Test helpers for Dkron and its plugin authors (a pytest plugin, entry point ``pytest11``).

Installing ``dkron-core`` makes these fixtures available to every pytest run; nothing to import.

Fixtures:
  ``dkron_agent``    a real single-node ``dkron agent`` process on free loopback ports, with a
                     fresh data dir; stopped (and killed if it must be) after the test.
  ``agent_factory``  builds more of them (or the same data dir again, for restart tests).
  ``dkron_plugins``  an :class:`IsolatedPluginHost`: a ``PluginHost`` holding only the plugins the
                     test registers (installed entry points are never loaded). After
                     ``dkron_plugins.register(module_or_obj, "name")`` its registries are built:
                     ``dkron_plugins.executors.get("echo")``, ``dkron_plugins.infos["name"].error``.
  ``run_executor``   the function :func:`run_executor`, for tests that prefer a fixture.

Functions:
  ``run_executor(executor, config, *, job_name="test", run_id=None, timeout=30, cancel=None)``
      validates ``config`` with the executor's ``validate`` (a ``ConfigError`` propagates), runs
      ``execute`` in a worker thread with a real ``CancelToken`` (cancelled after ``timeout``
      seconds, or use your own ``cancel``) and an in-memory output sink, and returns
      ``(ExecutionResult, output)`` with the output decoded as UTF-8. An exception raised by
      ``execute`` propagates; an executor still running 5 s after its cancellation fails the test.
  ``free_port()``    a free TCP port on 127.0.0.1, below the ephemeral range (see its docstring).

Packaging checks (what a user's ``pip install`` gets), for tests that build and install wheels:
  ``find_uv()``, ``build_wheel(project_dir, out_dir)`` (``uv build --wheel`` of that project
  alone), ``make_venv(path, *requirements)`` (a clean venv, no system site-packages, with the
  requirements installed by ``uv pip install``; returns its ``bin`` dir) and ``clean_env()``
  (this environment without variables that would leak the caller's packages or plugin choice).
  ``AgentProcess(..., command=[str(bin_dir / "dkron")])`` runs the agent of such a venv.

Everything here uses real processes and real sockets on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dkron.contracts import (
    CancelToken,
    ExecutionRequest,
    ExecutionResult,
    Executor,
    ExecutorRegistry,
    ProcessorRegistry,
)
from dkron.plugins import PluginHost, PluginInfo

__all__ = [
    "AgentProcess",
    "HttpResult",
    "IsolatedPluginHost",
    "MemorySink",
    "build_wheel",
    "clean_env",
    "find_uv",
    "free_port",
    "make_venv",
    "run_executor",
    "spawn_node",
]


#: Where ``free_port`` starts looking; it stops below the kernel's ephemeral range (read per call).
_LOWEST_PORT = 10000
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_port_random = random.SystemRandom()  # immune to tests that seed ``random``


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port in TIME_WAIT counts as taken
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing holds now, not handed out before by this process.

    Why not bind port 0: the kernel answers with a port from its ephemeral range, the range it
    also draws source ports from for outgoing connections. Between this call and the moment the
    caller's process binds the port (or binds it again, after a restart), any connection made on
    this machine may take it; CI saw a restarted server fail to bind its Raft port that way. A
    port below the ephemeral range is never taken by an outgoing connection. Falls back to port
    0 where the ephemeral range starts too low to leave room.
    """
    high = _ephemeral_low()
    with _handed_out_lock:
        if high - _LOWEST_PORT >= 1000:
            for _ in range(200):
                port = _port_random.randrange(_LOWEST_PORT, high)
                if port not in _handed_out and _bindable(port):
                    _handed_out.add(port)
                    return port
        for _ in range(50):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free TCP port on 127.0.0.1")


def spawn_node(directory: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    """Start ``dkron agent --node-name NAME`` (a client node unless ``args`` say ``--server``) with
    its data dir in ``directory/NAME``, a free gRPC port and its output in ``directory/NAME.log``.
    The caller stops it (terminate / kill and wait)."""
    with open(Path(directory) / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dkron.cli",
                "agent",
                "--node-name",
                name,
                "--data-dir",
                str(Path(directory) / name),
                "--rpc-port",
                str(free_port()),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


class HttpResult:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<HttpResult {self.status} {self.body[:200]!r}>"


class AgentProcess:
    """A ``dkron agent --server`` subprocess with an HTTP client bound to it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        node_name: str = "node1",
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str | None] | None = None,
        http_port: int | None = None,
        raft_port: int | None = None,
        command: Sequence[str] | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.node_name = node_name
        self.http_port = http_port or free_port()
        self.raft_port = raft_port or free_port()
        self.extra_args = extra_args
        #: How to invoke the CLI: this interpreter by default, or e.g. ``["/venv/bin/dkron"]`` to
        #: run the agent of another environment.
        self.command = tuple(command or (sys.executable, "-m", "dkron.cli"))
        # The test's environment plus ``env``; a value of None removes that variable.
        # Every agent started here flags responses that contain a job's secret value (see
        # dkron.api.leakcheck); the fixture fails the test at teardown if one did.
        self.env = {
            k: v for k, v in {**os.environ, "DKRON_TEST_SECRET_SCAN": "1", **(env or {})}.items() if v is not None
        }
        #: With ``ca_file`` the agent serves HTTPS (pass --http-tls-cert/--http-tls-key in extra_args).
        self.ca_file = ca_file
        #: Sent as ``Authorization: Bearer`` by :meth:`request` when set (ACL tests).
        self.token: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{node_name}.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.http_port}"

    def start(self, wait: float = 30.0) -> AgentProcess:
        args = [
            *self.command,
            "agent",
            "--server",
            "--bootstrap-expect",
            "1",
            "--data-dir",
            str(self.data_dir),
            "--node-name",
            self.node_name,
            "--http-addr",
            f"127.0.0.1:{self.http_port}",
            "--raft-port",
            str(self.raft_port),
            "--rpc-port",
            str(free_port()),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed with it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        self.wait_healthy(wait)
        return self

    def wait_healthy(self, wait: float = 30.0) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "/health", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"agent not healthy after {wait}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> HttpResult:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        if self.token and not any(h.lower() in ("authorization", "x-dkron-token") for h in headers or {}):
            req.add_header("Authorization", f"Bearer {self.token}")
        context = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return HttpResult(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return HttpResult(err.code, err.read(), dict(err.headers))

    def get(self, path: str, **kw: Any) -> HttpResult:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> HttpResult:
        return self.request("POST", path, body, **kw)

    def wait_for(self, predicate: Any, timeout: float = 15.0, interval: float = 0.1) -> Any:
        """Poll ``predicate()`` until it returns something truthy; fail with the agent log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s; agent log:\n{self.log()}")

    def wait_finished(self, job: str, execution_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The execution once it is no longer running (waits for it; fails with the agent log)."""

        def done() -> dict[str, Any] | None:
            res = self.get(f"/v1/jobs/{job}/executions/{execution_id}")
            execution = res.json() if res.status == 200 else {}
            return execution if execution.get("status") not in (None, "running") else None

        return self.wait_for(done, timeout=timeout)

    def run_and_wait(self, job: str, timeout: float = 15.0) -> dict[str, Any]:
        """Run ``job`` now (``POST /v1/jobs/<job>/run``) and return its finished execution."""
        res = self.post(f"/v1/jobs/{job}/run")
        assert res.status == 202, res
        return self.wait_finished(job, res.json()["execution_id"], timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def secret_leaks(self) -> str:
        """What the agent flagged as responses containing a job's secret value ("" if none)."""
        try:
            return (self.data_dir / "secret-leak.txt").read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[AgentProcess] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> AgentProcess:
        agent = AgentProcess(data_dir or tmp_path / f"data{len(started)}", **kwargs)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop(timeout=10)
    leaks = "".join(agent.secret_leaks() for agent in started)
    if leaks:
        pytest.fail(f"an agent sent a job's secret value in a response:\n{leaks}")


@pytest.fixture
def dkron_agent(agent_factory: Any) -> AgentProcess:
    return agent_factory().start()


# -- plugins and executors in-process ----------------------------------------------------------


class IsolatedPluginHost(PluginHost):
    """A :class:`~dkron.plugins.PluginHost` with only the plugins a test registers.

    Installed entry points are never loaded. Each :meth:`register` rebuilds the registries from
    scratch through the core's own ``build_registries``, so a plugin is tested exactly as the
    agent loads it (hook errors land in ``infos[name].error``, bad registrations are rejected).
    """

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(dict(settings or {}))

    def load_entry_points(self) -> None:
        raise RuntimeError("IsolatedPluginHost never loads installed plugins; register() them instead")

    def register(  # type: ignore[override]
        self, plugin: ModuleType | object, name: str | None = None, info: PluginInfo | None = None
    ) -> PluginInfo:
        """Register ``plugin`` (a module or an object with ``dkron_*`` hooks), rebuild the registries.

        ``name`` defaults to the module's (or the object's class's) name. Returns its
        :class:`~dkron.plugins.PluginInfo`, whose ``error`` says why it was rejected, if it was.
        """
        if name is None:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
        super().register(plugin, name, info)
        self.build_registries()
        return self.infos[name]

    def build_registries(self) -> None:
        """Build fresh registries from every registered plugin (safe to call again)."""
        settings = self.executors.settings
        self.executors = ExecutorRegistry(settings)
        self.processors = ProcessorRegistry(settings)
        for info in self.infos.values():
            info.executors, info.processors = [], []
            if info.error.startswith("dkron_"):  # a hook failure of the last build: run it again
                info.error = ""
        super().build_registries()


@pytest.fixture
def dkron_plugins() -> IsolatedPluginHost:
    """A plugin host with no plugins; ``dkron_plugins.register(module, "name")`` adds yours."""
    return IsolatedPluginHost()


class MemorySink:
    """An in-memory :class:`~dkron.contracts.OutputSink` (thread-safe); ``text`` decodes it."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()

    def write(self, chunk: bytes | str) -> None:
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        with self._lock:
            self._chunks.append(data)

    @property
    def data(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


#: How long an executor may keep running after its cancel token was set before the test fails.
CANCEL_GRACE = 5.0


def run_executor(
    executor: Executor | type,
    config: Mapping[str, Any],
    *,
    job_name: str = "test",
    run_id: str | None = None,
    timeout: float = 30,
    cancel: CancelToken | None = None,
) -> tuple[ExecutionResult, str]:
    """Validate ``config`` and run one execution like the agent does; return ``(result, output)``.

    ``executor`` is an instance or a class (instantiated with no arguments). ``config`` values
    should be strings, as the core passes them after coercing JSON numbers and booleans. The
    executor's ``validate`` runs first and its ``ConfigError`` propagates. ``execute`` then runs in
    a worker thread with a real :class:`~dkron.contracts.CancelToken`, cancelled with reason
    ``"timeout <timeout>s exceeded"`` after ``timeout`` seconds (pass ``cancel`` to also cancel it
    yourself). An exception from ``execute`` propagates; an executor that is still running
    :data:`CANCEL_GRACE` seconds after being cancelled fails with ``AssertionError``.
    """
    instance = executor() if isinstance(executor, type) else executor
    validated = instance.validate(dict(config))
    request = ExecutionRequest(
        job_name=job_name,
        run_id=run_id if run_id is not None else f"{job_name}-run-1",
        config=validated,
        execution_id=f"{job_name}-execution-1",
        node_name="test-node",
    )
    token = cancel if cancel is not None else CancelToken()
    sink = MemorySink()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = instance.execute(request, sink, token)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    timer = threading.Timer(timeout, token.cancel, args=(f"timeout {timeout:g}s exceeded",))
    timer.daemon = True
    worker = threading.Thread(target=work, name=f"run_executor-{job_name}", daemon=True)
    timer.start()
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
            if token.cancelled:
                worker.join(CANCEL_GRACE)
                if worker.is_alive():
                    raise AssertionError(
                        f"executor still running {CANCEL_GRACE:g}s after it was cancelled ({token.reason}); "
                        f"output so far: {sink.text[-500:]!r}"
                    )
    finally:
        timer.cancel()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome.get("result")
    if not isinstance(result, ExecutionResult):
        raise AssertionError(f"execute() must return an ExecutionResult, got {result!r}")
    return result, sink.text


@pytest.fixture(name="run_executor")
def _run_executor_fixture() -> Any:
    """:func:`run_executor` as a fixture: ``result, output = run_executor(MyExecutor(), {...})``."""
    return run_executor


# -- packaging: build wheels and install them in clean venvs -------------------------------------

#: Variables that would make a child process see other packages or another plugin selection.
LEAKY_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "DKRON_LOAD_PLUGINS",
    "DKRON_DISABLED_PLUGINS",
)


def clean_env(**overrides: str) -> dict[str, str]:
    """``os.environ`` without :data:`LEAKY_VARIABLES`, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_VARIABLES}
    env.update(overrides)
    return env


def find_uv() -> str | None:
    """The ``uv`` executable: ``$DKRON_UV``, then ``.tools/bin/uv`` of a parent of the cwd, then PATH."""
    if os.environ.get("DKRON_UV"):
        return os.environ["DKRON_UV"]
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidate = folder / ".tools" / "bin" / "uv"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("uv")


def _run(args: Sequence[str | Path], what: str, timeout: float, cwd: Path | None = None) -> str:
    command = [str(a) for a in args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{what} did not finish within {timeout:g}s: {' '.join(command)}") from exc
    if done.returncode != 0:
        raise AssertionError(f"{what} failed ({done.returncode}): {' '.join(command)}\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


def build_wheel(project_dir: Path, out_dir: Path, *, uv: str | None = None, timeout: float = 120) -> Path:
    """``uv build --wheel`` the project in ``project_dir`` alone into ``out_dir``; return the wheel."""
    uv = uv or find_uv()
    if uv is None:
        raise RuntimeError("uv is not installed (scripts/dev setup installs it in .tools/)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.glob("*.whl"))
    # The cwd is out_dir so that no uv.toml or workspace setting of the caller applies.
    args = [uv, "build", "--wheel", "--quiet", "--out-dir", out_dir.resolve(), Path(project_dir).resolve()]
    _run(args, "uv build", timeout, cwd=out_dir)
    built = sorted(set(out_dir.glob("*.whl")) - before)
    if len(built) != 1:
        raise AssertionError(f"uv build of {project_dir} produced {built}, expected one wheel")
    return built[0]


def make_venv(
    path: Path, *requirements: str | Path, uv: str | None = None, python: str | None = None, timeout: float = 300
) -> Path:
    """Create a clean venv at ``path`` and ``uv pip install`` ``requirements`` (wheels or names) in it.

    The venv has no system site-packages and no pip (``uv pip`` installs into it); dependencies
    come from the package index. Returns the venv's ``bin`` directory.
    """
    uv = uv or find_uv()
    if uv is None:
        raise RuntimeError("uv is not installed (scripts/dev setup installs it in .tools/)")
    path = Path(path)
    base = python or getattr(sys, "_base_executable", None) or sys.executable
    _run([base, "-m", "venv", "--without-pip", path], "python -m venv", 60)
    bin_dir = path / "bin"
    if requirements:
        _run(
            [uv, "pip", "install", "--quiet", "--python", bin_dir / "python", *requirements],
            "uv pip install",
            timeout,
            cwd=path,
        )
    return bin_dir
