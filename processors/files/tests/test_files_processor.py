"""The files processor writes each execution's output to <log_dir>/<job>/<id>.log, safely."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dkron.contracts import ConfigError
from dkron_processor_files import FilesProcessor
from dkron_processor_files.processor import DEFAULT_LOG_DIR, safe_component


def _execution(**overrides: Any) -> dict[str, Any]:
    return {
        "id": "1715000000000000000-node1",
        "job_name": "backup",
        "run_id": "backup@1715000000000",
        "status": "success",
        "success": True,
        "output": "line 1\nline 2\n",
        "node_name": "node1",
        "attempt": 1,
        **overrides,
    }


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_output_is_written_and_replaced_by_the_path(tmp_path: Path) -> None:
    execution = _execution()
    result = FilesProcessor().process(execution, {"log_dir": str(tmp_path)})
    path = tmp_path / "backup" / "1715000000000000000-node1.log"
    assert result == {**execution, "output": str(path)}
    assert execution["output"] == "line 1\nline 2\n"  # the caller's record is not mutated
    assert path.read_text() == "line 1\nline 2\n"
    assert _files(tmp_path) == ["backup/1715000000000000000-node1.log"]  # no temp file left


def test_file_mode_is_0644_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        FilesProcessor().process(_execution(), {"log_dir": str(tmp_path / "new" / "dir")})
    finally:
        os.umask(old)
    [path] = (tmp_path / "new" / "dir" / "backup").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("spelling", ["true", "1", "T", "True"])
def test_forward_keeps_the_output(tmp_path: Path, spelling: str) -> None:
    execution = _execution()
    assert FilesProcessor().process(execution, {"log_dir": str(tmp_path), "forward": spelling}) == execution
    assert (tmp_path / "backup" / f"{execution['id']}.log").read_text() == execution["output"]


def test_bytes_and_missing_output(tmp_path: Path) -> None:
    processor = FilesProcessor()
    processor.process(_execution(id="a", output=b"\xffraw"), {"log_dir": str(tmp_path)})
    processor.process(_execution(id="b", output=None), {"log_dir": str(tmp_path)})
    assert (tmp_path / "backup" / "a.log").read_bytes() == b"\xffraw"
    assert (tmp_path / "backup" / "b.log").read_bytes() == b""


def test_rewriting_the_same_execution_replaces_the_file(tmp_path: Path) -> None:
    FilesProcessor().process(_execution(output="first"), {"log_dir": str(tmp_path)})
    FilesProcessor().process(_execution(output="second"), {"log_dir": str(tmp_path)})
    assert (tmp_path / "backup" / "1715000000000000000-node1.log").read_text() == "second"


def test_retries_get_their_own_file(tmp_path: Path) -> None:
    FilesProcessor().process(_execution(output="try 1"), {"log_dir": str(tmp_path)})
    result = FilesProcessor().process(_execution(output="try 2", attempt=2), {"log_dir": str(tmp_path)})
    assert result["output"].endswith("/backup/1715000000000000000-node1.attempt-2.log")
    assert (tmp_path / "backup" / "1715000000000000000-node1.log").read_text() == "try 1"


def test_same_id_in_two_jobs_does_not_collide(tmp_path: Path) -> None:
    # Execution ids are "<scheduled ns>-<node>": two jobs due at the same tick share one.
    FilesProcessor().process(_execution(job_name="a", output="from a"), {"log_dir": str(tmp_path)})
    FilesProcessor().process(_execution(job_name="b", output="from b"), {"log_dir": str(tmp_path)})
    assert (tmp_path / "a" / "1715000000000000000-node1.log").read_text() == "from a"
    assert (tmp_path / "b" / "1715000000000000000-node1.log").read_text() == "from b"


HOSTILE = [
    "..",
    ".",
    "../../../etc/cron.d/evil",
    "/etc/passwd",
    "a/../../b",
    "..\\..\\windows",
    "ok\x00.log",
    "",
    ".hidden",
    "x" * 5000,
    "ünïcode/\u2215slash",
    "-rf",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_job_names_and_ids_stay_inside_log_dir(tmp_path: Path, name: str) -> None:
    log_dir = tmp_path / "logs"
    for execution in (_execution(job_name=name), _execution(id=name), _execution(job_name=name, id=name)):
        result = FilesProcessor().process(execution, {"log_dir": str(log_dir)})
        path = Path(result["output"])
        assert path.read_text() == "line 1\nline 2\n"
        assert path.resolve().is_relative_to(log_dir.resolve())
        assert path.parent.parent == log_dir  # exactly <log_dir>/<job>/<file>
        assert not path.name.startswith(".") and not path.parent.name.startswith(".")
        assert len(path.name.encode()) < 255
    assert [p for p in tmp_path.rglob("*") if not p.resolve().is_relative_to(log_dir.resolve())] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_cleaned_names_do_not_collide() -> None:
    assert safe_component("backup-2024_v1.0", "job") == "backup-2024_v1.0"  # safe names are kept
    cleaned = {safe_component(n, "job") for n in ["a/b", "a_b", "a\\b", "a b", "a:b"]}
    assert len(cleaned) == 5
    assert safe_component("", "job").startswith("job-")
    assert safe_component(None, "execution").startswith("execution-")


def test_symlinked_job_directory_is_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log_dir, outside = tmp_path / "logs", tmp_path / "outside"
    log_dir.mkdir()
    outside.mkdir()
    (log_dir / "backup").symlink_to(outside)
    execution = _execution()
    assert FilesProcessor().process(execution, {"log_dir": str(log_dir)}) == execution
    assert list(outside.iterdir()) == []
    assert "cannot write the output of job 'backup'" in caplog.text


def test_io_errors_are_logged_and_the_execution_is_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="dkron.processor.files")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    execution = _execution()
    assert FilesProcessor().process(execution, {"log_dir": str(blocker / "logs")}) == execution
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "cannot write the output of job 'backup' execution '1715000000000000000-node1'" in record.getMessage()


def test_unwritable_log_dir(caplog: pytest.LogCaptureFixture) -> None:
    # /proc refuses new directories even to root, so this holds whoever runs the tests.
    execution = _execution()
    assert FilesProcessor().process(execution, {"log_dir": "/proc/dkron-files-test"}) == execution
    assert "cannot write the output of job 'backup'" in caplog.text


def test_bad_config_at_run_time_does_not_raise(tmp_path: Path) -> None:
    execution = _execution()
    assert FilesProcessor().process(execution, {"forward": "maybe", "log_dir": str(tmp_path)}) == execution
    assert FilesProcessor().process(execution, {"log_dir": "relative/dir"}) == execution


def test_validate_normalises() -> None:
    config = FilesProcessor().validate(
        {"forward": "TRUE", "log_dir": " /var/log/../log/dkron/ ", "reporting_node": "n"}
    )
    assert config == {"forward": "true", "log_dir": "/var/log/dkron", "reporting_node": "n"}
    assert FilesProcessor().validate({}) == {}
    assert DEFAULT_LOG_DIR == "/var/log/dkron"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"forward": "yes"}, "forward"),
        ({"log_dir": "relative/logs"}, "log_dir"),
        ({"log_dir": "/var/log/\x00x"}, "log_dir"),
        ({"logdir": "/tmp"}, "logdir"),
    ],
)
def test_invalid_config_names_the_key(config: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        FilesProcessor().validate(config)
    assert info.value.key == key


def test_plugin_loads_through_entry_point() -> None:
    from dkron.plugins import load_plugins

    host = load_plugins()
    assert host.infos["files"].error == ""
    assert host.infos["files"].processors == ["files"]
    assert isinstance(host.processors.get("files"), FilesProcessor)
