"""Real entry-point discovery of broken plugins: one bad plugin never takes the others down.

Each fake plugin is a minimal installed distribution (``*.dist-info`` with ``METADATA`` and
``entry_points.txt`` plus its module) in a directory put on ``PYTHONPATH`` of a subprocess, so
``importlib.metadata`` finds it exactly as it finds a pip-installed plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dkron.testing import AgentProcess

NOP_EXECUTOR = """
from dkron import hookimpl
from dkron.contracts import ExecutionResult


class Nop:
    def validate(self, config):
        return dict(config)

    def execute(self, request, output, cancel):
        output.write("nop ran")
        return ExecutionResult(success=True)
"""

PLUGINS = {
    # entry-point name: (distribution, module, source)
    "broken": (
        "broken_plugin",
        "broken_plugin_mod",
        'raise RuntimeError("broken_plugin_mod cannot be imported: missing libfoo")\n',
    ),
    "raising": (
        "raising_plugin",
        "raising_plugin_mod",
        NOP_EXECUTOR
        + """
@hookimpl
def dkron_register_executors(registry):
    registry.add("early", Nop)  # registered, then the hook fails: must not stay usable
    raise ValueError("raising_plugin: no licence key configured")
""",
    ),
    "twice": (
        "twice_plugin",
        "twice_plugin_mod",
        NOP_EXECUTOR
        + """
@hookimpl
def dkron_register_executors(registry):
    registry.add("dup", Nop)
    registry.add("dup", Nop)
""",
    ),
    "typo": (
        "typo_plugin",
        "typo_plugin_mod",
        NOP_EXECUTOR
        + """
@hookimpl
def dkron_register_executorz(registry):
    registry.add("typo", Nop)
""",
    ),
    "nop": (
        "nop_plugin",
        "nop_plugin_mod",
        NOP_EXECUTOR
        + """
@hookimpl
def dkron_register_executors(registry):
    registry.add("nop", Nop)
""",
    ),
}


def make_distribution(site: Path, dist: str, ep_name: str, module: str, source: str) -> None:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[dkron]\n{ep_name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    for ep_name, (dist, module, source) in PLUGINS.items():
        make_distribution(root, dist, ep_name, module, source)
    return root


def plugin_env(site: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k not in ("DKRON_LOAD_PLUGINS", "DKRON_DISABLED_PLUGINS")}
    return {**env, "PYTHONPATH": path, **extra}


def list_plugins(env: dict[str, str]) -> dict[str, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "dkron.cli", "plugins"], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    return {item["name"]: item for item in json.loads(result.stdout)}


def test_dkron_plugins_lists_each_broken_plugin_with_its_error_and_the_good_ones_without(site):
    plugins = list_plugins(plugin_env(site))

    broken = plugins["broken"]
    assert broken["distribution"] == "broken_plugin" and broken["version"] == "0.1"
    assert "import failed" in broken["error"]
    assert "RuntimeError" in broken["error"] and "missing libfoo" in broken["error"]

    raising = plugins["raising"]
    assert "dkron_register_executors failed" in raising["error"]
    assert "ValueError" in raising["error"] and "no licence key" in raising["error"]
    assert raising["executors"] == []  # what it registered before failing is withdrawn

    twice = plugins["twice"]
    assert "'dup' is already registered" in twice["error"]
    assert twice["executors"] == []

    typo = plugins["typo"]
    assert "unknown hook" in typo["error"] and "dkron_register_executorz" in typo["error"]

    for good, executors in (("shell", ["shell"]), ("nop", ["nop"])):
        assert plugins[good]["error"] is None, plugins[good]
        assert plugins[good]["executors"] == executors
    assert plugins["log"]["error"] is None and plugins["log"]["processors"] == ["log"]


def test_an_agent_with_broken_plugins_installed_starts_reports_them_and_runs_shell_jobs(site, tmp_path):
    agent = AgentProcess(tmp_path / "data", env=plugin_env(site)).start()
    try:
        listing = {p["name"]: p for p in agent.get("/v1/plugins").json()}
        assert "missing libfoo" in listing["broken"]["error"]
        assert "no licence key" in listing["raising"]["error"]
        assert "already registered" in listing["twice"]["error"]
        assert listing["shell"]["error"] is None

        job = {
            "name": "still-works",
            "schedule": "@manually",
            "executor": "shell",
            "executor_config": {"command": "echo shell-ok"},
        }
        assert agent.post("/v1/jobs", job).status == 201
        exec_id = agent.post("/v1/jobs/still-works/run").json()["execution_id"]
        done = agent.wait_for(
            lambda: (
                (e := agent.get(f"/v1/jobs/still-works/executions/{exec_id}").json()).get("status") == "success" and e
            )
        )
        assert done["output"].strip() == "shell-ok"

        # The healthy third-party executor works too; the failed plugins' names are refused.
        nop = {"name": "nop-job", "schedule": "@manually", "executor": "nop"}
        assert agent.post("/v1/jobs", nop).status == 201
        for name in ("early", "dup", "typo"):
            refused = agent.post("/v1/jobs", {"name": f"j-{name}", "schedule": "@manually", "executor": name})
            assert refused.status == 400, refused
            assert name in refused.json()["error"]
        assert "broken" in agent.log() and "missing libfoo" in agent.log()  # logged at start
        metrics = agent.get("/metrics").body.decode()
        for name in ("broken", "raising", "twice", "typo"):
            assert f'dkron_plugin_errors{{plugin="{name}"}} 1.0' in metrics
        assert 'plugin="shell"' not in metrics and 'plugin="nop"' not in metrics
    finally:
        assert agent.stop() == 0


def test_dkron_load_plugins_is_an_allow_list():
    plugins = list_plugins(plugin_env(Path("/nonexistent"), DKRON_LOAD_PLUGINS="shell"))
    assert list(plugins) == ["shell"]
    assert plugins["shell"]["error"] is None
    assert list_plugins(plugin_env(Path("/nonexistent"), DKRON_LOAD_PLUGINS="")) == {}


def test_dkron_disabled_plugins_makes_a_shell_job_submission_fail_naming_the_executor(tmp_path):
    env = plugin_env(Path("/nonexistent"), DKRON_DISABLED_PLUGINS="shell")
    assert "shell" not in list_plugins(env)
    agent = AgentProcess(tmp_path / "data", env=env).start()
    try:
        job = {
            "name": "needs-shell",
            "schedule": "@every 1m",
            "executor": "shell",
            "executor_config": {"command": "true"},
        }
        res = agent.post("/v1/jobs", job)
        assert res.status == 400, res
        body = res.json()
        assert "executor" in body["error"] and "'shell'" in body["error"]
        assert body.get("field") == "executor"
        assert agent.get("/v1/jobs/needs-shell").status == 404
    finally:
        assert agent.stop() == 0
