"""The ``files`` processor: writes each execution's output to a file, like Dkron's.

The file is ``<log_dir>/<job name>/<execution id>.log`` (mode 0644) on the node where the job ran.
Dkron writes ``<log_dir>/<execution id>.log``; a directory per job is needed here because an
execution id (``<scheduled time in ns>-<node>``) is only unique within its job: two jobs due at
the same second on one node get the same id, and a flat directory would let one overwrite the
other. It also lets retention be set per job (``find <log_dir>/<job> -mtime +30 -delete``).

Names are made safe before they touch the file system: each becomes one path component of
``[A-Za-z0-9._-]`` that cannot start with a dot, so nothing can climb out of ``log_dir``. The
job directory is opened with ``O_NOFOLLOW`` relative to ``log_dir`` and the file is written to a
temporary name and renamed, so a planted symlink cannot redirect the write and readers never see
a half-written file. Any failure is logged and the execution is returned unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any

from dkron import pluginkit
from dkron.contracts import ConfigError
from dkron.pluginkit import parse_forward

__all__ = [
    "DEFAULT_LOG_DIR",
    "KNOWN_KEYS",
    "FilesProcessor",
    "log_file_name",
    "parse_forward",
    "parse_log_dir",
    "safe_component",
    "write_output",
]

log = logging.getLogger("dkron.processor.files")

DEFAULT_LOG_DIR = "/var/log/dkron"
#: ``reporting_node`` is injected by Dkron into every processor's config, so it is accepted.
KNOWN_KEYS = frozenset({"forward", "log_dir", "reporting_node"})
FILE_MODE = 0o644
DIR_MODE = 0o755
#: Longest kept part of a name; longer (or cleaned) names get a hash suffix instead.
MAX_COMPONENT = 150

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_LEADING_DOTS = re.compile(r"^\.+")


def parse_log_dir(config: Mapping[str, str]) -> str:
    """The ``log_dir`` (default ``/var/log/dkron``): an absolute path, normalised."""
    raw = config.get("log_dir", "")
    value = raw.strip() if isinstance(raw, str) else ""
    if not value:
        return DEFAULT_LOG_DIR
    if "\0" in value or not os.path.isabs(value):
        raise ConfigError(f"log_dir must be an absolute directory path, got {raw!r}", key="log_dir")
    return os.path.normpath(value)


def safe_component(value: object, fallback: str) -> str:
    """``value`` as one harmless path component: ``[A-Za-z0-9._-]``, never starting with a dot.

    Names that had to be changed (or shortened) get a short hash of the original appended, so
    two different hostile names cannot end up in the same file. Safe names are kept as they are.
    """
    text = "" if value is None else str(value)
    cleaned = _UNSAFE.sub("_", text)
    cleaned = _LEADING_DOTS.sub(lambda m: "_" * len(m.group()), cleaned) or fallback
    if cleaned != text or len(cleaned) > MAX_COMPONENT:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        cleaned = f"{cleaned[:MAX_COMPONENT]}-{digest}"
    return cleaned


def log_file_name(execution: Mapping[str, Any]) -> str:
    """``<execution id>.log`` (``<id>.attempt-<n>.log`` for a retry, so it keeps its own file)."""
    name = safe_component(execution.get("id"), "execution")
    attempt = execution.get("attempt")
    if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 1:
        return f"{name}.attempt-{attempt}.log"
    return f"{name}.log"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_output(log_dir: str, execution: Mapping[str, Any]) -> str:
    """Write the execution's output to its file under ``log_dir``; return the file's path."""
    job_dir = safe_component(execution.get("job_name"), "job")
    file_name = log_file_name(execution)
    path = os.path.join(log_dir, job_dir, file_name)
    if os.path.commonpath([log_dir, os.path.normpath(path)]) != log_dir:  # pragma: no cover - by construction
        raise ValueError(f"{path} is outside {log_dir}")
    output = execution.get("output")
    data = output if isinstance(output, bytes) else str(output or "").encode("utf-8", "replace")
    os.makedirs(log_dir, mode=DIR_MODE, exist_ok=True)
    root_fd = os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(job_dir, DIR_MODE, dir_fd=root_fd)
        # O_NOFOLLOW: a symlink planted as the job directory is refused, never followed.
        dir_fd = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    tmp = f".{file_name}.{secrets.token_hex(4)}.tmp"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, FILE_MODE, dir_fd=dir_fd)
        try:
            os.fchmod(fd, FILE_MODE)  # 0644 whatever the agent's umask
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, file_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(dir_fd)
    return path


class FilesProcessor:
    """Stateless; one instance serves every execution."""

    def validate(self, config: Mapping[str, str]) -> dict[str, str]:
        pluginkit.check_keys(
            config, KNOWN_KEYS, suggest=False, known="the files processor knows 'forward' and 'log_dir'"
        )
        normalised = {key: str(value).strip() for key, value in config.items()}
        if "forward" in config:
            normalised["forward"] = "true" if parse_forward(config) else "false"
        if "log_dir" in config:
            normalised["log_dir"] = parse_log_dir(config)
        return normalised

    def process(self, execution: dict[str, Any], config: Mapping[str, str]) -> dict[str, Any]:
        job, execution_id = execution.get("job_name"), execution.get("id")
        try:
            forward, log_dir = parse_forward(config), parse_log_dir(config)
            path = write_output(log_dir, execution)
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError
            log.error("files: cannot write the output of job %r execution %r: %s", job, execution_id, exc)
            return execution
        except Exception:  # never let a processor failure touch the execution record
            log.exception("files: unexpected error for job %r execution %r", job, execution_id)
            return execution
        if forward:
            return execution
        return {**execution, "output": path}
