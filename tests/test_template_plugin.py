"""The copy-me plugin in plugins/_template works as a plugin author will use it.

The skeleton is excluded from the uv workspace, so it is tested the way an author's plugin is
installed: its wheel and dkron-core's are built with ``uv build``, installed in a fresh venv (no
system site-packages, nothing from the workspace), and from that venv ``dkron plugins`` lists it,
its own tests pass with that venv's pytest, and a real agent runs a ``template`` job (slow).

The ``dkron.testing`` fixtures those tests rely on (``run_executor``, ``dkron_plugins``) are
checked here too, in the workspace, with small executors defined below (fast).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import dkron.testing
from dkron import hookimpl
from dkron.contracts import CancelToken, ConfigError, ExecutionRequest, ExecutionResult, ExecutorRegistry, OutputSink
from dkron.testing import (
    LEAKY_VARIABLES,
    AgentProcess,
    IsolatedPluginHost,
    build_wheel,
    clean_env,
    find_uv,
    make_venv,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "plugins" / "_template"


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheels of dkron-core and the template, and pytest."""
    uv = str(ROOT / ".tools" / "bin" / "uv") if (ROOT / ".tools" / "bin" / "uv").exists() else find_uv()
    if uv is None:
        pytest.skip("uv is not installed (scripts/dev setup installs it)")
    tmp = tmp_path_factory.mktemp("template-plugin")
    core = build_wheel(ROOT / "core", tmp / "wheels" / "core", uv=uv)
    template = build_wheel(TEMPLATE, tmp / "wheels" / "template", uv=uv)
    assert template.name.startswith("dkron_executor_template-")
    return make_venv(tmp / "venv", core, template, "pytest>=8", uv=uv)


def _run(args: list[str | Path], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=cwd
    )


@pytest.mark.slow
def test_dkron_plugins_lists_the_template(venv_bin: Path) -> None:
    done = _run([venv_bin / "dkron", "plugins"])
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed == [
        {
            "name": "template",
            "distribution": "dkron-executor-template",
            "version": "0.1.0",
            "hooks": ["dkron_register_executors"],
            "executors": ["template"],
            "processors": [],
            "error": None,
        }
    ]


@pytest.mark.slow
def test_the_templates_own_tests_pass_in_the_fresh_venv(venv_bin: Path) -> None:
    # Run in the template's folder: its pyproject.toml is the pytest config (rootdir), as in a copy.
    done = _run([venv_bin / "python", "-m", "pytest", "-p", "no:cacheprovider", "-rA"], cwd=TEMPLATE, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"rootdir: {TEMPLATE}" in done.stdout, done.stdout  # the template's own config, not the repo's
    summary = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=+ \d+ passed in [\d.]+s( \(.*\))? =+", summary), summary  # no skip, no xfail
    for name in ("test_writes_the_message", "test_registered_through_the_hook", "test_a_real_agent_runs_a_job"):
        assert f"PASSED tests/test_template.py::{name}" in done.stdout, done.stdout


@pytest.mark.slow
def test_an_agent_of_the_fresh_venv_runs_a_template_job(
    venv_bin: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    agent = agent_factory(command=[str(venv_bin / "dkron")], env=dict.fromkeys(LEAKY_VARIABLES)).start()
    plugins = {p["name"]: p for p in agent.get("/v1/plugins").json()}
    assert set(plugins) == {"template"}, plugins
    assert plugins["template"]["error"] is None

    rejected = agent.post(
        "/v1/jobs", {"name": "x", "schedule": "@manually", "executor": "template", "executor_config": {"mesage": "t"}}
    )
    assert (rejected.status, rejected.json()["field"]) == (400, "executor_config.mesage"), rejected

    job = {
        "name": "hello",
        "schedule": "@manually",
        "executor": "template",
        "executor_config": {"message": "hello from the template"},
    }
    assert agent.post("/v1/jobs", job).status == 201
    started = agent.post("/v1/jobs/hello/run")
    assert started.status == 202, started
    path = f"/v1/jobs/hello/executions/{started.json()['execution_id']}"

    def finished() -> Any:
        execution = agent.get(path).json()
        return execution if execution.get("status") in ("success", "failed") else None

    execution = agent.wait_for(finished, 20)
    assert (execution["status"], execution["output"]) == ("success", "hello from the template\n"), execution


# -- the dkron.testing fixtures the template's tests use, checked in the workspace -----------------


class Sleeper:
    """Waits on its cancel token for ``seconds``, as a well-behaved executor does."""

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        if "seconds" not in config:
            raise ConfigError("seconds is required", key="seconds")
        return {**config, "validated": "yes"}

    def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
        output.write("\u00e9".encode()[:1])  # one character split across two chunks
        output.write("\u00e9".encode()[1:])
        output.write(f" {request.job_name} {request.run_id} {request.config['validated']}")
        if request.config.get("raise"):
            raise RuntimeError(request.config["raise"])
        if cancel.wait(float(request.config["seconds"])):
            return ExecutionResult(success=False, error=f"killed: {cancel.reason}")
        return ExecutionResult(success=True)


def test_run_executor_validates_then_executes(run_executor: Callable[..., Any]) -> None:
    result, output = run_executor(Sleeper, {"seconds": "0"}, job_name="nap", run_id="nap@1")
    assert (result.success, output) == (True, "\u00e9 nap nap@1 yes")
    result, output = run_executor(Sleeper(), {"seconds": "0"})
    assert output == "\u00e9 test test-run-1 yes"
    with pytest.raises(ConfigError, match="seconds is required"):
        run_executor(Sleeper(), {})
    with pytest.raises(RuntimeError, match="boom"):
        run_executor(Sleeper(), {"seconds": "0", "raise": "boom"})


def test_run_executor_cancels_at_the_timeout(run_executor: Callable[..., Any]) -> None:
    began = time.monotonic()
    result, _ = run_executor(Sleeper(), {"seconds": "30"}, timeout=0.3)
    assert 0.25 < time.monotonic() - began < 3
    assert (result.success, result.error) == (False, "killed: timeout 0.3s exceeded")
    cancel = CancelToken()
    threading.Timer(0.1, cancel.cancel, args=("killed by the test",)).start()
    result, _ = run_executor(Sleeper(), {"seconds": "30"}, cancel=cancel)
    assert result.error == "killed: killed by the test"


def test_run_executor_fails_an_executor_that_ignores_its_cancel_token(monkeypatch: pytest.MonkeyPatch) -> None:
    class Stubborn(Sleeper):
        def execute(self, request: ExecutionRequest, output: OutputSink, cancel: CancelToken) -> ExecutionResult:
            time.sleep(1)
            return ExecutionResult(success=True)

    monkeypatch.setattr(dkron.testing, "CANCEL_GRACE", 0.2)
    with pytest.raises(AssertionError, match=r"still running 0.2s after it was cancelled \(timeout 0.1s exceeded\)"):
        dkron.testing.run_executor(Stubborn(), {"seconds": "0"}, timeout=0.1)


@hookimpl
def _good_hook(registry: ExecutorRegistry) -> None:
    registry.add("sleeper", Sleeper)


@hookimpl
def _raising_hook(registry: ExecutorRegistry) -> None:
    registry.add("early", Sleeper)
    raise ValueError("no licence key")


def test_dkron_plugins_holds_only_what_the_test_registers(dkron_plugins: IsolatedPluginHost) -> None:
    assert dkron_plugins.listing() == [] and dkron_plugins.executors.names() == []  # nothing installed leaks in
    raising = dkron_plugins.register(SimpleNamespace(dkron_register_executors=_raising_hook), "raising")
    assert raising.error == "dkron_register_executors failed: ValueError: no licence key"
    good = dkron_plugins.register(SimpleNamespace(dkron_register_executors=_good_hook), "good")
    assert (good.error, good.executors) == ("", ["sleeper"])
    assert raising.error.startswith("dkron_register_executors failed")  # still failing, nothing left behind
    assert dkron_plugins.executors.names() == ["sleeper"]
    assert dkron_plugins.executors.owner("sleeper") == "good"
    typo = dkron_plugins.register(SimpleNamespace(dkron_register_executorz=_good_hook), "typo")
    assert typo.error.startswith("registration failed: ") and "dkron_register_executorz" in typo.error
    dkron_plugins.build_registries()  # idempotent
    assert [(p["name"], p["executors"]) for p in dkron_plugins.listing()] == [
        ("good", ["sleeper"]),
        ("raising", []),
        ("typo", []),
    ]
    with pytest.raises(RuntimeError, match="never loads installed plugins"):
        dkron_plugins.load_entry_points()
