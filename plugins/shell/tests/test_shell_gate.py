"""Runs sent ahead of their second: spawned early behind the gate, started by one write.

Every test of test_shell_execute.py also runs through the gate (see the ``run`` fixture). These
tests cover what only the gate has: the command waits until ``start``, a discarded or orphaned
gate never runs it, and where the gate could not be exact it declines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import RecordingSink, gone

from dkron.contracts import CancelToken, ExecutionRequest
from dkron_executor_shell import ShellExecutor

RunFn = Any


def _request(executor: ShellExecutor, config: dict[str, str], **fields: Any) -> ExecutionRequest:
    return ExecutionRequest(config=executor.validate(config), **{"job_name": "job1", "run_id": "run-1", **fields})


def _prepare(executor: ShellExecutor, config: dict[str, str]) -> tuple[Any, RecordingSink]:
    sink = RecordingSink()
    return executor.prepare(_request(executor, config), sink, CancelToken()), sink


def _env_of(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)  # (pwd output last)


def test_the_command_waits_until_start(executor: ShellExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    prepared, sink = _prepare(executor, {"command": f"touch {marker}"})
    assert prepared is not None
    time.sleep(0.3)
    assert psutil.Process(prepared.proc.pid).is_running()  # spawned, and waiting
    assert not marker.exists(), "the command ran before start()"
    prepared.start()
    result = prepared.wait()
    assert result.success and marker.exists() and sink.text == ""


@pytest.mark.parametrize("agent_pwd", ["same", "stale", "absent"])
def test_a_gated_run_gets_the_same_environment_pid_and_cwd(
    executor: ShellExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent_pwd: str
) -> None:
    """dash rewrites PWD; the gate puts back what the agent passed (or leaves it unset)."""
    if agent_pwd == "absent":
        monkeypatch.delenv("PWD", raising=False)
    else:
        monkeypatch.setenv("PWD", os.getcwd() if agent_pwd == "same" else "/")
    monkeypatch.setenv("AGENT_VAR", "with spaces\nand a newline")
    for config in (
        {"command": "/usr/bin/env -0", "cwd": str(tmp_path), "env": "A=1"},
        {"command": "env -0", "env": "A=2"},
        {"command": "env -0; pwd", "shell": "true", "cwd": str(tmp_path)},
    ):
        request = _request(executor, config)
        plain = RecordingSink()
        assert executor.execute(request, plain, CancelToken()).success
        gated = RecordingSink()
        prepared = executor.prepare(request, gated, CancelToken())
        assert prepared is not None, config
        prepared.start()
        assert prepared.wait().success
        assert _env_of(gated.text) == _env_of(plain.text), config
        assert gated.text.rsplit("\0", 1)[-1] == plain.text.rsplit("\0", 1)[-1]  # pwd's output


def test_the_gated_command_keeps_the_pid_that_is_killed(executor: ShellExecutor) -> None:
    prepared, sink = _prepare(executor, {"command": "echo $$; exec sleep 0", "shell": "true"})
    prepared.start()
    assert prepared.wait().success
    assert sink.text == f"{prepared.proc.pid}\n"  # the process group's leader, as when not gated


def test_discard_kills_the_waiting_process(executor: ShellExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    prepared, _ = _prepare(executor, {"command": f"touch {marker}"})
    pid = prepared.proc.pid
    prepared.discard()
    assert gone(pid)
    time.sleep(0.2)
    assert not marker.exists()


def test_a_gate_whose_node_died_never_runs_the_command(tmp_path: Path) -> None:
    """The node is killed (-9) while a run waits in the gate: the command must never run."""
    marker = tmp_path / "ran"
    script = textwrap.dedent(
        f"""
        import os, signal
        from dkron.contracts import CancelToken, ExecutionRequest
        from dkron_executor_shell import ShellExecutor
        executor = ShellExecutor()
        config = executor.validate({{"command": "touch {marker}"}})
        request = ExecutionRequest(job_name="j", run_id="r", config=config)
        prepared = executor.prepare(request, open(os.devnull, "w"), CancelToken())
        print(prepared.proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    node = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert node.returncode == -signal.SIGKILL, node.stderr
    gate_pid = int(node.stdout)
    assert gone(gate_pid), "the gate outlived its node"
    time.sleep(0.2)
    assert not marker.exists(), "an orphaned gate ran its command"


def test_runs_that_could_not_be_gated_exactly_are_declined(
    executor: ShellExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "no-shebang"
    script.write_text("echo ran\n")
    script.chmod(0o755)
    declined = [
        {"command": "no-such-command-xyz"},  # the shell's error would differ from ours
        {"command": str(script)},  # the shell would run it; execve refuses it
        {"command": "true", "cwd": str(tmp_path / "missing")},
    ]
    for config in declined:
        prepared, _ = _prepare(executor, config)
        assert prepared is None, config
    monkeypatch.setenv("IFS", ":")  # dash would reset it
    assert _prepare(executor, {"command": "true"})[0] is None
    monkeypatch.delenv("IFS")
    monkeypatch.setenv("PATH", "/usr/bin%builtin:/usr/bin:/bin")  # dash's own PATH syntax
    assert _prepare(executor, {"command": "true"})[0] is None
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    prepared, _ = _prepare(executor, {"command": "true"})
    assert prepared is not None
    prepared.discard()


def test_a_script_without_shebang_fails_the_same_way_either_way(run: RunFn, tmp_path: Path) -> None:
    script = tmp_path / "no-shebang"
    script.write_text("echo ran\n")
    script.chmod(0o755)
    result, sink = run({"command": str(script)})
    assert not result.success and sink.text == ""
    assert result.error == f"shell: cannot run {script}: Exec format error"


def test_common_runs_are_gated(executor: ShellExecutor, tmp_path: Path) -> None:
    for config in (
        {"command": "echo hi"},
        {"command": "echo hi", "shell": "true", "cwd": str(tmp_path)},
        {"command": "cat", "payload": "aGkK"},
        {"command": "echo $A", "shell": "true", "env": "A=hi", "timeout": "5s"},
    ):
        prepared, sink = _prepare(executor, config)
        assert prepared is not None, config
        prepared.start()
        result = prepared.wait()
        assert result.success and sink.text == "hi\n", (config, sink.text)
