"""Real processes through ShellExecutor.execute: what a job's owner sees."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordingSink, gone

from dkron.contracts import CancelToken, ExecutionRequest
from dkron_executor_shell import ShellExecutor

#: The ``run`` fixture from conftest.py: run(config, cancel=None, **request) -> (result, sink).
RunFn = Callable[..., Any]


def test_output_is_streamed_while_the_process_runs(run: RunFn) -> None:
    started = time.monotonic()
    result, sink = run({"command": "echo first; sleep 0.5; echo second", "shell": "true"})
    finished = time.monotonic()
    assert result.success
    assert sink.text == "first\nsecond\n"
    first_at, first_chunk = sink.chunks[0]
    assert first_chunk == b"first\n"
    assert first_at - started < 0.3
    assert finished - first_at > 0.4


def test_stderr_is_interleaved_with_stdout(run: RunFn) -> None:
    result, sink = run({"command": "echo out1; echo err >&2; echo out2", "shell": "true"})
    assert result.success
    assert sink.text == "out1\nerr\nout2\n"


def test_exit_status_fails_the_run(run: RunFn) -> None:
    result, sink = run({"command": "echo bye; exit 3", "shell": "true"})
    assert (result.success, result.error, result.exit_code) == (False, "exit status 3", 3)
    assert sink.text == "bye\n"
    ok, _ = run({"command": "true"})
    assert (ok.success, ok.error, ok.exit_code) == (True, "", 0)


def test_success_codes(run: RunFn) -> None:
    result, _ = run({"command": "sh -c 'exit 3'", "success_codes": "0, 3"})
    assert (result.success, result.exit_code) == (True, 3)
    result, _ = run({"command": "true", "success_codes": "1"})
    assert (result.success, result.error) == (False, "exit status 0")


def test_death_by_signal_is_reported(run: RunFn) -> None:
    result, _ = run({"command": "kill -TERM $$", "shell": "true"})
    assert not result.success
    assert result.error == "killed by signal SIGTERM"


def test_exec_mode_does_not_use_a_shell(run: RunFn) -> None:
    config = {"command": "printf '%s|' $FOO 'a  b' \"c;d\"", "env": "FOO=bar"}
    result, sink = run(config)
    assert result.success
    assert sink.text == "$FOO|a  b|c;d|"
    result, sink = run({**config, "shell": "true"})
    assert sink.text == "bar|a  b|c;d|"


def test_env_forms_and_execution_variables(run: RunFn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_VAR", "from-agent")
    script = (
        "import os; print('|'.join(os.environ.get(k, '-') for k in "
        "('AGENT_VAR', 'A', 'B', 'ENV_JOB_NAME', 'DKRON_JOB_NAME', 'DKRON_RUN_ID', "
        "'DKRON_EXECUTION_ID', 'DKRON_ATTEMPT', 'DKRON_SCHEDULED_AT', 'DKRON_NODE_NAME')))"
    )
    request = {
        "job_name": "backup",
        "run_id": "run-42",
        "execution_id": "exec-7",
        "attempt": 2,
        "scheduled_at": "2024-05-01T10:00:00Z",
        "node_name": "node-a",
    }
    expected_tail = "backup|backup|run-42|exec-7|2|2024-05-01T10:00:00Z|node-a\n"
    command = f'python3 -c "{script}"'
    # Dkron's comma form; a piece without "=" continues the previous value.
    result, sink = run({"command": command, "env": "A=x,y,B=z"}, **request)
    assert result.success, sink.text
    assert sink.text == "from-agent|x,y|z|" + expected_tail
    # JSON form, for values that contain ",NAME=".
    result, sink = run({"command": command, "env": '{"A": "p,B=q", "B": "r"}'}, **request)
    assert sink.text == "from-agent|p,B=q|r|" + expected_tail
    # A job cannot spoof the identifying variables.
    result, sink = run({"command": command, "env": "DKRON_RUN_ID=fake"}, **request)
    assert sink.text == "from-agent|-|-|" + expected_tail


def test_cwd(run: RunFn, tmp_path: Path) -> None:
    result, sink = run({"command": "pwd", "cwd": str(tmp_path)})
    assert result.success
    assert sink.text == f"{tmp_path}\n"


def test_missing_cwd_fails_the_run(run: RunFn, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result, sink = run({"command": "pwd", "cwd": str(missing)})
    assert not result.success
    assert result.error == f"shell: working directory {missing} does not exist"
    assert sink.text == ""


def test_command_not_found_fails_the_run(run: RunFn) -> None:
    result, _ = run({"command": "no-such-command-xyz --flag"})
    assert not result.success
    assert result.error == "shell: command not found: no-such-command-xyz"


def test_payload_goes_to_stdin(run: RunFn) -> None:
    payload = b'{"hello": "world"}\n'
    result, sink = run({"command": "cat", "payload": base64.b64encode(payload).decode()})
    assert result.success
    assert sink.data == payload


def test_large_payload_does_not_deadlock(run: RunFn) -> None:
    # Larger than both pipe buffers: stdin must be fed while output is read.
    payload = os.urandom(600_000)
    result, sink = run({"command": "cat", "payload": base64.b64encode(payload).decode(), "timeout": "10s"})
    assert result.success
    assert sink.data == payload


def test_without_payload_stdin_is_empty(run: RunFn) -> None:
    result, sink = run({"command": "wc -c", "timeout": "5s"})
    assert result.success
    assert sink.text.strip() == "0"


def test_timeout_kills_the_whole_process_group(run: RunFn) -> None:
    started = time.monotonic()
    result, sink = run({"command": "sleep 30 & echo $!; sleep 30", "shell": "true", "timeout": "500ms"})
    elapsed = time.monotonic() - started
    assert not result.success
    assert elapsed < 2.0
    assert result.error == "shell: execution time exceeding timeout 500ms, job was killed"
    lines = sink.text.splitlines()
    assert lines[-1] == "shell: execution time exceeding timeout 500ms, job was killed"
    assert gone(int(lines[0])), "backgrounded grandchild survived the timeout"


def test_mem_limit_kills_the_job(run: RunFn) -> None:
    started = time.monotonic()
    threads_before = threading.active_count()
    code = "b = b'x' * (200 * 1024 * 1024); import time; time.sleep(10)"
    result, sink = run({"command": f'python3 -c "{code}"', "mem_limit": "50MB"})
    assert not result.success
    assert time.monotonic() - started < 5.0
    assert result.error.startswith("shell: memory usage (")
    assert result.error.endswith("exceeding limit (52428800 bytes), job was killed")
    assert sink.text.endswith(result.error + "\n")
    assert threading.active_count() == threads_before  # no sampler left behind


def test_cancel_stops_the_job(run: RunFn) -> None:
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel, args=("killed via API",)).start()
    started = time.monotonic()
    result, sink = run({"command": "echo started; sleep 30", "shell": "true"}, cancel=cancel)
    assert time.monotonic() - started < 1.5
    assert not result.success
    assert result.error == "shell: killed: killed via API"
    assert sink.text == "started\nshell: killed: killed via API\n"


def test_cancel_lets_the_job_clean_up_then_escalates(run: RunFn) -> None:
    # A job that traps SIGTERM gets to print; one that ignores it is SIGKILLed after ~2 s.
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel, args=("shutdown",)).start()
    command = "trap 'echo cleaning up; exit 0' TERM; while :; do sleep 0.05; done"
    result, sink = run({"command": command, "shell": "true"}, cancel=cancel)
    assert result.error == "shell: killed: shutdown"
    assert "cleaning up" in sink.text

    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel, args=("shutdown",)).start()
    started = time.monotonic()
    result, _ = run({"command": "trap '' TERM; while :; do sleep 0.05; done", "shell": "true"}, cancel=cancel)
    assert 1.8 < time.monotonic() - started < 4.0
    assert result.error == "shell: killed: shutdown"


def test_already_cancelled_run_does_not_start(executor: ShellExecutor, tmp_path: Path) -> None:
    # execute() only: a prepared run killed before its start is discarded by the core
    # (core/tests/test_prepared_runs.py, core/tests/test_watch_runs.py).
    cancel = CancelToken()
    cancel.cancel("agent stopping")
    marker = tmp_path / "ran"
    config = executor.validate({"command": f"touch {marker}"})
    request = ExecutionRequest(job_name="job1", run_id="run-1", config=config)
    result = executor.execute(request, RecordingSink(), cancel)
    assert result.error == "shell: killed: agent stopping"
    assert not marker.exists()


def test_output_of_background_children_is_collected(run: RunFn) -> None:
    # Like cron (and Dkron), the run lasts until everyone holding its output has finished.
    result, sink = run({"command": "(sleep 0.3; echo late) & echo early", "shell": "true"})
    assert result.success
    assert sink.text == "early\nlate\n"


def test_concurrent_runs_keep_their_output_apart(run: RunFn) -> None:
    results: dict[int, str] = {}

    def one(i: int) -> None:
        result, sink = run({"command": "echo $DKRON_RUN_ID", "shell": "true"}, run_id=f"run-{i}")
        assert result.success
        results[i] = sink.text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"run-{i}\n" for i in range(16)}


def test_works_without_pidfd(run: RunFn, monkeypatch: pytest.MonkeyPatch) -> None:
    # Kernels before 5.3 have no pidfd_open; exit is then noticed by polling waitid.
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    result, sink = run({"command": "echo hi; exit 2", "shell": "true"})
    assert (result.error, sink.text) == ("exit status 2", "hi\n")
    result, sink = run({"command": "(sleep 0.2; echo late) & echo early", "shell": "true"})
    assert (result.success, sink.text) == (True, "early\nlate\n")
    result, _ = run({"command": "sleep 30", "timeout": "200ms"})
    assert result.error == "shell: execution time exceeding timeout 200ms, job was killed"
