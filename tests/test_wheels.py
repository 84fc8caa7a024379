"""What users install: every distribution of the repository, built alone, as a wheel.

Each member of the workspace (core, plugins/*, processors/*; not the _template skeleton) is built
with ``uv build --wheel`` on its own, and its wheel's METADATA and entry_points.txt are checked:
the right name, ``dkron-core<0.2,>=0.1`` for plugins (no workspace path leaking into the
metadata) and its ``dkron`` entry point.

Then the scenario of a real deployment: a fresh venv with only the dkron-core and
dkron-executor-kafka wheels. Its agent runs a kafka job against a real Tansu broker and the message
is read back. After ``uv pip uninstall dkron-executor-kafka`` the restarted agent starts, lists no
kafka plugin, and refuses a kafka job with a 400 naming the unknown executor.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dkron.testing import LEAKY_VARIABLES, AgentProcess, build_wheel, clean_env, find_uv, make_venv

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CORE_RANGE = "dkron-core<0.2,>=0.1"
#: folder -> (distribution, import package, kind); kind is "core", "executor" or "processor".
DISTRIBUTIONS: dict[str, tuple[str, str, str]] = {"core": ("dkron-core", "dkron", "core")}
for _kind, _folder in (("executor", "plugins"), ("processor", "processors")):
    for _project in sorted((ROOT / _folder).glob("*/pyproject.toml")):
        if not _project.parent.name.startswith("_"):  # _template is a skeleton, not a distribution
            _name = _project.parent.name
            DISTRIBUTIONS[f"{_folder}/{_name}"] = (f"dkron-{_kind}-{_name}", f"dkron_{_kind}_{_name}", _kind)


def _uv() -> str:
    uv = str(ROOT / ".tools" / "bin" / "uv") if (ROOT / ".tools" / "bin" / "uv").exists() else find_uv()
    if uv is None:
        pytest.skip("uv is not installed (scripts/dev setup installs it)")
    return uv


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """folder -> its wheel, each built alone into its own directory (a few at a time)."""
    uv = _uv()
    out = tmp_path_factory.mktemp("wheels")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            folder: pool.submit(build_wheel, ROOT / folder, out / folder.replace("/", "-"), uv=uv)
            for folder in DISTRIBUTIONS
        }
        return {folder: future.result() for folder, future in futures.items()}


def test_every_workspace_member_is_checked() -> None:
    assert {"core", "plugins/shell", "plugins/kafka", "processors/log"} <= set(DISTRIBUTIONS)
    assert "plugins/_template" not in DISTRIBUTIONS


def _read(wheel: Path) -> tuple[Any, configparser.ConfigParser, str, set[str]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
        assert len(dist_info) == 1, names
        (info,) = dist_info
        metadata_text = archive.read(f"{info}/METADATA").decode()
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str  # type: ignore[assignment,method-assign]  # keep names' case
        if f"{info}/entry_points.txt" in names:
            entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
    top_level = {n.split("/", 1)[0] for n in names} - dist_info
    return Parser().parsestr(metadata_text), entry_points, metadata_text, top_level


@pytest.mark.parametrize("folder", sorted(DISTRIBUTIONS))
def test_wheel_metadata_and_entry_points(folder: str, wheels: dict[str, Path]) -> None:
    distribution, package, kind = DISTRIBUTIONS[folder]
    wheel = wheels[folder]
    assert wheel.name.startswith(distribution.replace("-", "_") + "-"), wheel.name
    metadata, entry_points, text, top_level = _read(wheel)
    assert metadata["Name"] == distribution
    assert metadata["Version"] and metadata["Requires-Python"] == ">=3.11"
    requires = metadata.get_all("Requires-Dist") or []
    # Workspace sources must not leak: no paths, no direct URLs, no editable or file references.
    for leak in (str(ROOT), "file:", " @ ", "workspace", "editable"):
        assert leak not in text.split("\n\n", 1)[0], f"{leak!r} in METADATA of {wheel.name}:\n{text}"
    assert top_level == {package}, f"{wheel.name} ships {top_level}, expected only {package}/ (no tests)"
    if kind == "core":
        assert not any(r.startswith("dkron-core") for r in requires), requires
        assert dict(entry_points["console_scripts"]) == {"dkron": "dkron.cli:main"}
        assert dict(entry_points["pytest11"]) == {"dkron": "dkron.testing"}
        assert "dkron" not in entry_points  # the core is not a plugin
    else:
        assert CORE_RANGE in requires, requires
        assert [r for r in requires if r.startswith("dkron-core")] == [CORE_RANGE], requires
        assert entry_points.sections() == ["dkron"], entry_points.sections()
        name = folder.split("/", 1)[1]
        assert dict(entry_points["dkron"]) == {name: package}


# -- the deployment scenario: only dkron-core and dkron-executor-kafka installed ------------------


def _kafka_support() -> ModuleType:
    """plugins/kafka/tests/kafka_support.py (real Tansu broker, verifying consumer), by its path."""
    if "kafka_support" in sys.modules:  # already imported by the kafka plugin's own tests
        return sys.modules["kafka_support"]
    path = ROOT / "plugins" / "kafka" / "tests" / "kafka_support.py"
    spec = importlib.util.spec_from_file_location("kafka_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kafka_support"] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["kafka_support"]
        raise
    return module


def _dkron_plugins(bin_dir: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(bin_dir / "dkron"), "plugins"], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _run_job(agent: AgentProcess, name: str) -> dict[str, Any]:
    started = agent.post(f"/v1/jobs/{name}/run")
    assert started.status == 202, started
    path = f"/v1/jobs/{name}/executions/{started.json()['execution_id']}"

    def finished() -> Any:
        execution = agent.get(path).json()
        return execution if execution.get("status") in ("success", "failed") else None

    return agent.wait_for(finished, 30)


def test_kafka_plugin_alone_in_a_fresh_venv_then_uninstalled(
    wheels: dict[str, Path], tmp_path: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    support = _kafka_support()
    bin_dir = make_venv(tmp_path / "venv", wheels["core"], wheels["plugins/kafka"], uv=_uv())
    listed = _dkron_plugins(bin_dir)
    assert [(p["name"], p["distribution"], p["executors"], p["error"]) for p in listed] == [
        ("kafka", "dkron-executor-kafka", ["kafka"], None)
    ]

    broker = support.start_tansu(tmp_path)
    try:
        agent_options = {"command": [str(bin_dir / "dkron")], "env": dict.fromkeys(LEAKY_VARIABLES)}
        agent = agent_factory(tmp_path / "data", **agent_options).start()
        assert [p["name"] for p in agent.get("/v1/plugins").json()] == ["kafka"]
        job = {
            "name": "emit",
            "schedule": "@manually",
            "executor": "kafka",
            "executor_config": {
                "brokerAddress": broker.address,
                "topic": "wheel-test",
                "key": "k1",
                "message": "from a wheel",
                "timeout": "10s",
            },
        }
        created = agent.post("/v1/jobs", job)
        assert created.status == 201, created
        execution = _run_job(agent, "emit")
        assert execution["status"] == "success", execution
        output = support.RecordingSink()
        output.write(execution["output"])
        where = support.reported(output)  # "produced 12 bytes with key ... partition P, offset O"
        assert (where.size, where.topic) == (len("from a wheel"), "wheel-test")
        assert support.consume_one(broker.address, where) == (b"k1", b"from a wheel")
    finally:
        broker.stop()

    # Uninstall the plugin, restart the same node: it starts and knows kafka no more.
    assert agent.stop() == 0, agent.log()
    done = subprocess.run(
        [_uv(), "pip", "uninstall", "--python", str(bin_dir / "python"), "dkron-executor-kafka"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _dkron_plugins(bin_dir) == []

    again = agent_factory(agent.data_dir, http_port=agent.http_port, raft_port=agent.raft_port, **agent_options)
    again.start()
    assert again.get("/v1/plugins").json() == []
    assert again.get("/v1/jobs/emit").status == 200  # the stored job survives its executor's removal
    rejected = again.post("/v1/jobs", {**job, "name": "emit-again"})
    assert rejected.status == 400, rejected
    body = rejected.json()
    assert body["field"] == "executor", body
    assert "unknown executor 'kafka'" in body["error"], body
    orphan = _run_job(again, "emit")
    assert orphan["status"] == "failed", orphan
    assert "kafka" in orphan["error"] and "not installed" in orphan["error"], orphan
