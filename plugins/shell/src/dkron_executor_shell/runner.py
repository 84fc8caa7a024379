"""Runs one child process: streams its output, feeds its stdin, enforces timeout, memory and cancel.

Everything happens in the calling thread (``execute`` already runs in a worker thread): one
``poll()`` loop waits on the output pipe, a pidfd (process exit), and the stdin pipe while a
payload is pending, with a short timeout so the :class:`CancelToken`, the deadline and the
memory sampler are checked too. No helper thread is started, so nothing can leak.

The child is the leader of a new session/process group, so kills reach everything it
started. It is reaped only at the very end: until then its pid (= the group id) stays reserved
by the zombie, so ``killpg`` can never hit an unrelated group that reused the number.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping

from dkron.contracts import CancelToken, ExecutionResult, OutputSink
from dkron_executor_shell.config import ShellConfig

log = logging.getLogger(__name__)

__all__ = ["kill_and_reap", "run", "spawn", "supervise"]

#: How often a running job notices its CancelToken (the token has no fd to poll on).
CANCEL_POLL = 0.1
#: Memory sampling period for ``mem_limit``.
MEM_SAMPLE_PERIOD = 0.5
#: Grace period between SIGTERM and SIGKILL when cancelled.
TERM_GRACE = 2.0
#: After SIGKILL, how long to keep draining the pipe. Only a process that left the group
#: (setsid) can still hold it open; we stop reading rather than hang on it.
DRAIN_AFTER_KILL = 1.0
READ_SIZE = 65536

_POLL_OUT_EVENTS = select.POLLIN | select.POLLHUP | select.POLLERR
#: One child is started at a time in this process. CPython 3.11 holds the GIL through vfork()
#: until the child has exec'd, so starts are serialized anyway; without this lock the threads
#: of a burst (one per run) also fight over the GIL inside Popen's Python code, and an agent
#: spent about 40 % of its CPU switching between them (bench/bench_cluster.py, section a).
_SPAWN_LOCK = threading.Lock()
_devnull_fd: int | None = None
_devnull_lock = threading.Lock()


def _devnull() -> int:
    # One shared read-only /dev/null for every child's stdin instead of an open() per run.
    # It is close-on-exec, and Popen dup2()s it onto fd 0 in the child.
    global _devnull_fd
    if _devnull_fd is None:
        with _devnull_lock:
            if _devnull_fd is None:
                _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


def _killpg(pgid: int, sig: signal.Signals) -> None:
    # The group may already be gone, or a member may have changed uid (setuid binary).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _has_exited(pid: int) -> bool:
    """Has the child exited? WNOWAIT leaves it a zombie so its pid (our pgid) stays reserved."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _tree_rss(pid: int) -> int:
    import psutil  # imported lazily: only jobs with mem_limit pay for it

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # exited between listing and sampling
            total += proc.memory_info().rss
    return total


def _start_error(exc: BaseException, cfg: ShellConfig) -> str:
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if cfg.cwd is not None and exc.filename == cfg.cwd:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return f"shell: working directory {cfg.cwd} does not exist"
            return f"shell: cannot use working directory {cfg.cwd}: {reason}"
        if exc.errno == errno.ENOENT:
            return f"shell: command not found: {cfg.argv[0]}"
        return f"shell: cannot run {cfg.argv[0]}: {reason}"
    return f"shell: cannot start command: {exc}"


class _Sink:
    """Writes to the OutputSink, remembering whether output ended with a newline."""

    def __init__(self, output: OutputSink) -> None:
        self.output = output
        self.at_line_start = True
        self.broken = False

    def write(self, data: bytes) -> None:
        if not data or self.broken:
            return
        self.at_line_start = data.endswith(b"\n")
        try:
            self.output.write(data)
        except Exception:  # a broken sink must not leave the child running unsupervised
            log.exception("shell: output sink failed; further output of this run is dropped")
            self.broken = True

    def note(self, message: str) -> None:
        """Append an executor message on its own line, as Dkron does for kills."""
        prefix = b"" if self.at_line_start else b"\n"
        self.write(prefix + message.encode() + b"\n")


def spawn(
    argv: list[str] | tuple[str, ...], cfg: ShellConfig, env: Mapping[bytes, bytes], stdin: int, out_w: int
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new session, output (both streams) into ``out_w``."""
    with _SPAWN_LOCK:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=out_w,
            stderr=out_w,  # interleaved into the same pipe, in the order the child writes
            cwd=cfg.cwd,
            env=env,
            start_new_session=True,
        )


def run(cfg: ShellConfig, env: Mapping[bytes, bytes], output: OutputSink, cancel: CancelToken) -> ExecutionResult:
    """Start ``cfg.argv`` and supervise it until it exits (and its output pipe closes)."""
    out_r, out_w = os.pipe()
    stdin_r = stdin_w = None
    if cfg.payload is not None:
        stdin_r, stdin_w = os.pipe()
    try:
        proc = spawn(cfg.argv, cfg, env, stdin_r if stdin_r is not None else _devnull(), out_w)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        for fd in (out_r, stdin_w):
            if fd is not None:
                os.close(fd)
        return ExecutionResult(success=False, error=_start_error(exc, cfg))
    finally:
        # The child holds its own copies; ours must go or we would never see EOF.
        os.close(out_w)
        if stdin_r is not None:
            os.close(stdin_r)
    return supervise(proc, cfg, output, cancel, out_r, stdin_w)


def supervise(
    proc: subprocess.Popen[bytes],
    cfg: ShellConfig,
    output: OutputSink,
    cancel: CancelToken,
    out_r: int,
    stdin_w: int | None,
) -> ExecutionResult:
    """Stream ``proc``'s output, feed its stdin, enforce its limits; reap it. Closes both fds."""
    supervisor = None
    try:
        supervisor = _Supervisor(proc, cfg, output, cancel, out_r, stdin_w)
        return supervisor.loop()
    except BaseException:
        # A bug in the loop (or KeyboardInterrupt): never leave the job running unsupervised.
        kill_and_reap(proc)
        if supervisor is None and stdin_w is not None:
            os.close(stdin_w)
        raise
    finally:
        os.close(out_r)


def kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group, then reap the child."""
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _Supervisor:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        cfg: ShellConfig,
        output: OutputSink,
        cancel: CancelToken,
        out_fd: int,
        stdin_fd: int | None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.cfg = cfg
        self.cancel = cancel
        self.sink = _Sink(output)
        self.out_fd = out_fd
        self.out_open = True
        self.exited = False
        self.poller = select.poll()
        self.poller.register(out_fd, _POLL_OUT_EVENTS)
        try:
            self.pidfd: int | None = os.pidfd_open(self.pid)
            self.poller.register(self.pidfd, select.POLLIN)
        except (AttributeError, OSError):  # no pidfd (old kernel): exit polled with waitid
            self.pidfd = None
        self.stdin_fd = stdin_fd
        self.stdin_data = memoryview(cfg.payload or b"")
        self.reason = ""  # set once we decide to kill: becomes the result's error
        self.term_until: float | None = None
        self.drain_until: float | None = None
        now = time.monotonic()
        self.deadline = now + cfg.timeout if cfg.timeout is not None else None
        self.next_sample = now + MEM_SAMPLE_PERIOD if cfg.mem_limit is not None else None
        if stdin_fd is not None:
            os.set_blocking(stdin_fd, False)
            self._feed_stdin()  # usually fits in the pipe buffer at once
            if self.stdin_fd is not None:
                self.poller.register(stdin_fd, select.POLLOUT)

    # -- stdin ---------------------------------------------------------------------------------
    def _close_stdin(self) -> None:
        if self.stdin_fd is not None:
            with contextlib.suppress(KeyError):  # not registered yet when closed at start
                self.poller.unregister(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = None

    def _feed_stdin(self) -> None:
        assert self.stdin_fd is not None
        try:
            while self.stdin_data:
                written = os.write(self.stdin_fd, self.stdin_data[:READ_SIZE])
                self.stdin_data = self.stdin_data[written:]
        except BlockingIOError:
            return  # pipe full: continue when poll() says it is writable
        except OSError:
            pass  # EPIPE: the child does not read its stdin, which is its business
        self._close_stdin()

    # -- kills ---------------------------------------------------------------------------------
    def _kill(self, reason: str) -> None:
        self.reason = reason
        _killpg(self.pid, signal.SIGKILL)
        self.drain_until = time.monotonic() + DRAIN_AFTER_KILL

    def _check_limits(self, now: float) -> None:
        if self.reason:
            if self.term_until is not None and now >= self.term_until:
                self.term_until = None
                _killpg(self.pid, signal.SIGKILL)
                self.drain_until = now + DRAIN_AFTER_KILL
            return
        if self.cancel.cancelled:
            # Polite first, so jobs can clean up; SIGKILL follows after TERM_GRACE.
            self.reason = f"shell: killed: {self.cancel.reason}"
            _killpg(self.pid, signal.SIGTERM)
            self.term_until = now + TERM_GRACE
        elif self.deadline is not None and now >= self.deadline:
            self._kill(f"shell: execution time exceeding timeout {self.cfg.timeout_text}, job was killed")
        elif self.next_sample is not None and now >= self.next_sample:
            self.next_sample = now + MEM_SAMPLE_PERIOD
            limit = self.cfg.mem_limit or 0
            rss = _tree_rss(self.pid) if not self.exited else 0
            if rss > limit:
                self._kill(f"shell: memory usage ({rss} bytes) exceeding limit ({limit} bytes), job was killed")

    def _poll_timeout_ms(self, now: float) -> int:
        waits = [CANCEL_POLL]
        for moment in (self.term_until, self.drain_until):
            if moment is not None:
                waits.append(moment - now)
        if not self.reason:
            for moment in (self.deadline, self.next_sample):
                if moment is not None:
                    waits.append(moment - now)
        if self.pidfd is None and not self.out_open and not self.exited:
            waits.append(0.005)  # pipe closed, exit imminent, nothing to wake us: poll briefly
        return max(0, math.ceil(min(waits) * 1000))

    # -- main loop -----------------------------------------------------------------------------
    def loop(self) -> ExecutionResult:
        try:
            while True:
                now = time.monotonic()
                self._check_limits(now)
                if self.exited and (not self.out_open or (self.drain_until is not None and now >= self.drain_until)):
                    break
                for fd, events in self.poller.poll(self._poll_timeout_ms(now)):
                    if fd == self.out_fd:
                        data = os.read(fd, READ_SIZE)
                        if data:
                            self.sink.write(data)
                        else:
                            self.out_open = False
                            self.poller.unregister(fd)
                    elif fd == self.pidfd:
                        self.exited = True
                        self.poller.unregister(fd)
                    elif fd == self.stdin_fd:
                        if events & (select.POLLERR | select.POLLHUP):
                            self._close_stdin()
                        else:
                            self._feed_stdin()
                if self.pidfd is None and not self.exited:
                    self.exited = _has_exited(self.pid)
            if self.reason:
                # Cancelled jobs may have left members that ignored SIGTERM but closed the pipe.
                _killpg(self.pid, signal.SIGKILL)
        finally:
            self._close_stdin()
            if self.pidfd is not None:
                os.close(self.pidfd)
        returncode = self.proc.wait()  # reaps the zombie; only now may the pid be reused
        return self._result(returncode)

    def _result(self, returncode: int) -> ExecutionResult:
        exit_code = returncode if returncode >= 0 else None
        if self.reason:
            self.sink.note(self.reason)
            return ExecutionResult(success=False, error=self.reason, exit_code=exit_code)
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = str(-returncode)
            return ExecutionResult(success=False, error=f"killed by signal {name}")
        if returncode in self.cfg.success_codes:
            return ExecutionResult(success=True, exit_code=returncode)
        return ExecutionResult(success=False, error=f"exit status {returncode}", exit_code=returncode)
