"""Run untrusted code (an assistant's answer) in a separate, limited process; never in ours.

Each run gets:

* a new Python process (``python -I``: no user site, no environment paths) in a new session,
  killed with its whole process group at the wall-clock timeout;
* resource limits: CPU seconds, address space, size of any file written, open files, and number
  of processes (which root ignores: the audit hook below refuses new processes in any case);
* no network: a fresh network namespace where the system allows it (Linux), and in any case an
  audit hook that refuses sockets;
* a temporary working directory that is deleted afterwards; the audit hook refuses writes
  outside it, new processes, signals to other processes and ctypes;
* output captured to a size-capped file, of which the first ``max_output`` bytes come back.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000

# Runs first in the child: limits that Python code cannot lift, then the untrusted program.
_PRELUDE = r'''
import os, sys
_root = os.path.realpath(os.getcwd())
def _guard(event, args):
    if event == "open":
        path, mode = args[0], args[1]
        if isinstance(path, int):
            return
        real = os.path.realpath(os.fsdecode(path)) if path is not None else ""
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
        writing = writing or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
        if writing and not (real == _root or real.startswith(_root + os.sep)):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {real}")
    elif event.startswith("socket.") and event not in ("socket.gethostname",):
        raise PermissionError("sandbox: network access is not allowed")
    elif event in ("os.fork", "os.forkpty", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "subprocess.Popen", "pty.spawn"):
        raise PermissionError("sandbox: starting processes is not allowed")
    elif event in ("os.kill", "os.killpg") and args and args[0] not in (os.getpid(), 0):
        raise PermissionError("sandbox: signalling other processes is not allowed")
    elif event.startswith("ctypes.") or event in ("os.remove", "os.unlink", "os.rmdir", "os.rename", "os.chmod", "os.chown") and args and not os.path.realpath(os.fsdecode(args[0])).startswith(_root):
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(_guard)
del _guard
_source = open("program.py").read()
exec(compile(_source, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    timeout_s: float = 10.0  #: wall clock
    cpu_s: int = 10
    memory_mb: int = 1024  #: address space
    file_size_mb: int = 8  #: largest file it may write (its output included)
    processes: int = 32
    open_files: int = 64
    max_output: int = 16_384  #: bytes of output returned


@dataclass
class RunResult:
    """How a run went."""

    returncode: int | None  #: None when it was killed at the timeout
    output: str  #: stdout and stderr, capped
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _limit_child(limits: Limits, workdir: str) -> None:
    """In the child, before exec: its own session, no network, hard limits, no root."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)  # best effort: the audit hook also refuses sockets
    except Exception:
        pass
    mb = 1024 * 1024
    for name, value in (
        (resource.RLIMIT_CPU, limits.cpu_s),
        (resource.RLIMIT_AS, limits.memory_mb * mb),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mb),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(name, (value, value))
    # root ignores this limit; the audit hook refuses new processes for everyone
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))


def run_program(source: str, limits: Limits = Limits()) -> RunResult:
    """Run ``source`` as a Python program in the sandbox and wait for it."""
    with tempfile.TemporaryDirectory(prefix="userlm-sandbox-") as workdir:
        os.chmod(workdir, 0o700)
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        out_path = os.path.join(workdir, "output.txt")
        started = time.perf_counter()
        with open(out_path, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", _PRELUDE],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"},
                preexec_fn=lambda: _limit_child(limits, workdir),
                close_fds=True,
            )
            timed_out = False
            try:
                process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # its children too
                except (ProcessLookupError, PermissionError):
                    pass
                process.wait()
        with open(out_path, "rb") as f:
            output = f.read(limits.max_output).decode("utf-8", errors="replace")
    return RunResult(None if timed_out else process.returncode, output, timed_out, time.perf_counter() - started)


async def run_program_async(source: str, limits: Limits = Limits(), *, gate: asyncio.Semaphore | None = None) -> RunResult:
    """:func:`run_program` in a worker thread (runs of different tasks go in parallel)."""
    if gate is None:
        return await asyncio.to_thread(run_program, source, limits)
    async with gate:
        return await asyncio.to_thread(run_program, source, limits)
