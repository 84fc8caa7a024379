"""Starting a job's process before its second, so that only its exec happens at the second.

The core hands a run that is due at a whole second to this node about half a second early.
For such a run, :func:`prepare` forks the child at once, as a ``/bin/sh`` that waits for one
line on its stdin (the *gate*). At the second, :meth:`GatedChild.start` writes that line and
the shell execs the job's command in place: same pid, same process group, same argv. The fork,
Python's ``Popen`` work and the shell's own start-up all leave the burst of the second.

The job must not be able to tell: a gated run gets exactly the environment, working directory,
stdin, argv and errors it would get when started at its second. Two things make that need care:

* dash changes the environment it passes on: it drops variables whose names are not shell
  identifiers, resets ``IFS``, ``PPID`` and ``OPTIND``, and sets ``PWD``. ``PWD`` is put back by
  the gate; an environment holding any of the others is not gated.
* ``exec`` in a shell is not ``execve``: a command that is missing gives the shell's own error,
  and a file without ``#!`` is run as a shell script. So the command is gated only if it
  resolves (as ``Popen`` would resolve it) to an executable file that starts with ``#!`` or is
  an ELF binary. Anything else starts at its second as before, with the usual error.

If the node dies, the gate's stdin reaches end of file and the shell exits without running
anything: a held run never runs unsupervised, and never early.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import subprocess
from collections.abc import Mapping

from dkron.contracts import CancelToken, ExecutionResult, OutputSink
from dkron_executor_shell.config import ShellConfig
from dkron_executor_shell.runner import kill_and_reap, spawn, supervise

__all__ = ["GatedChild", "prepare"]

GATE_SHELL = "/bin/sh"
_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Variables dash would change (or the gate itself uses): an environment with one is not gated.
_ALTERED = frozenset({b"IFS", b"PPID", b"OPTIND", b"dkron_gate"})


@functools.cache
def _gate_shell() -> str | None:
    """``/bin/sh`` if it is dash, whose behaviour the checks above describe; else None (no gate)."""
    return GATE_SHELL if os.path.basename(os.path.realpath(GATE_SHELL)) == "dash" else None


def _script(has_pwd: bool, has_payload: bool) -> str:
    lines = ["read -r dkron_gate || exit 1", "unset dkron_gate"]
    if not has_payload:
        lines.append("exec </dev/null")  # as an ungated run's stdin
    lines.append("PWD=$1; shift" if has_pwd else "unset PWD; shift")
    lines.append('exec "$@"')
    return "\n".join(lines)


def _env_passes(env: Mapping[bytes, bytes]) -> bool:
    return all(_IDENTIFIER.match(name) and name not in _ALTERED for name in env)


def _executable_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and os.access(path, os.X_OK)
    except OSError:
        return False


def _execve_runs(path: str) -> bool:
    """Does ``execve`` run this file as such (ELF, or a ``#!`` script), not fail with ENOEXEC?"""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return False
    return head == b"\x7fELF" or head.startswith(b"#!")


def _resolves(argv0: str, cfg: ShellConfig, env: Mapping[bytes, bytes]) -> bool:
    """Would ``argv0`` run as a program, found the way both ``Popen`` and dash find it?"""
    cwd = cfg.cwd or os.getcwd()
    if "/" in argv0:
        path = os.path.join(cwd, argv0)
        return _executable_file(path) and _execve_runs(path)
    path = env.get(b"PATH")
    if path is None or b"%" in path:  # no PATH: the two defaults differ; '%': dash's extension
        return False
    for entry in os.fsdecode(path).split(os.pathsep):
        candidate = os.path.join(cwd, entry, argv0)
        if _executable_file(candidate):  # the first one both would run
            return _execve_runs(candidate)
    return False


class GatedChild:
    """A child spawned ahead of its start, waiting in the gate (a ``PreparedExecution``)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        cfg: ShellConfig,
        output: OutputSink,
        cancel: CancelToken,
        out_r: int,
        gate_w: int,
    ) -> None:
        self.proc = proc
        self.cfg = cfg
        self.output = output
        self.cancel = cancel
        self.out_r = out_r
        self.gate_w: int | None = gate_w

    def start(self) -> None:
        """Open the gate: the shell execs the command now."""
        assert self.gate_w is not None
        with contextlib.suppress(OSError):  # the gate died (killed from outside): wait() says how
            os.write(self.gate_w, b"\n")
        if self.cfg.payload is None:
            os.close(self.gate_w)
            self.gate_w = None
        # With a payload the gate's stdin is the command's: wait() feeds the payload into it.

    def wait(self) -> ExecutionResult:
        """After :meth:`start`: supervise the command until it ends (as an ungated run)."""
        gate_w, self.gate_w = self.gate_w, None
        return supervise(self.proc, self.cfg, self.output, self.cancel, self.out_r, gate_w)

    def discard(self) -> None:
        """It will not start: kill the waiting shell and release its pipes."""
        kill_and_reap(self.proc)
        os.close(self.out_r)
        if self.gate_w is not None:
            os.close(self.gate_w)
            self.gate_w = None


def prepare(cfg: ShellConfig, env: Mapping[bytes, bytes], output: OutputSink, cancel: CancelToken) -> GatedChild | None:
    """Spawn ``cfg``'s command behind a gate, or return None if it cannot be gated exactly."""
    shell = _gate_shell()
    if shell is None or not _env_passes(env) or not _resolves(cfg.argv[0], cfg, env):
        return None
    pwd = env.get(b"PWD")
    args = [shell, "-c", _script(pwd is not None, cfg.payload is not None), "sh"]
    args += [os.fsdecode(pwd) if pwd is not None else "", *cfg.argv]
    out_r, out_w = os.pipe()
    gate_r, gate_w = os.pipe()
    try:
        proc = spawn(args, cfg, env, gate_r, out_w)
    except (OSError, ValueError, subprocess.SubprocessError):
        os.close(out_r)
        os.close(gate_w)
        return None  # started at its second instead, which reports the error as usual
    finally:
        os.close(out_w)
        os.close(gate_r)
    return GatedChild(proc, cfg, output, cancel, out_r, gate_w)
