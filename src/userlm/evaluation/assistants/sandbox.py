"""Run untrusted code (an assistant's answer) in isolation; never in our process.

Isolation comes from bubblewrap (Debian's ``bubblewrap``) where the system has it and allows
namespaces. Each run then gets:

* a read-only view of the system's programs and libraries, a few files of ``/etc`` and the Python
  installation (less the data that ships with userlm), and nothing else of this machine (no home
  folders, no project, no data sets, no keys); a fresh ``/proc`` and ``/dev``; one writable place: a size-limited ``/tmp`` that is also
  its working directory;
* its own user, pid, network, mount, IPC and UTS namespaces (no network, nothing of ours to see,
  and nothing it starts outlives the run), a new session, and an empty environment;
* a seccomp filter that refuses new processes (threads are allowed);
* resource limits: CPU seconds, address space, size of any file, open files; a wall-clock timeout
  after which everything is killed; output captured to a size-capped file.

Where bubblewrap is missing or refused, one loud warning says so and the older guard is used: a
child process with the same limits, a new network namespace where allowed, and an in-process audit
hook, which determined code can get around. :func:`isolation` says which one is in force; every
test verdict records it.

Test verdicts (:func:`run_tests`) are positive evidence: the task's trusted tests run in one sandbox
and call the candidate function, which lives in another, through a pipe that carries plain values
only. See ``sandbox_child.py``.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ... import data as _DATA

CLONE_NEWNET = 0x40000000
BUBBLEWRAP = "bubblewrap"
GUARD = "audit-hook"  #: the weaker fallback
_CHILD = str(Path(__file__).with_name("sandbox_child.py"))


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    timeout_s: float = 10.0  #: wall clock
    cpu_s: int = 10
    memory_mb: int = 1024  #: address space
    file_size_mb: int = 8  #: largest file it may write (its output included)
    disk_mb: int = 64  #: all files it writes together (bubblewrap only)
    open_files: int = 64
    max_output: int = 16_384  #: bytes of output returned


@dataclass
class RunResult:
    """How a plain run went. ``ok`` is the exit status: never use it as a test verdict."""

    returncode: int | None  #: None when it was killed at the timeout
    output: str  #: stdout and stderr, capped
    timed_out: bool
    seconds: float
    isolation: str = GUARD

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass
class TestResult:
    """A test verdict, written by the trusted harness only after the tests ran to the end."""

    passed: bool
    detail: str  #: why it failed ("" when it passed)
    isolation: str
    seconds: float
    output: str = ""  #: what the candidate's own process printed, capped
    timed_out: bool = False


# ---- which isolation --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def isolation() -> str:
    """``bubblewrap`` when a sandbox can be made here, else ``audit-hook`` (said once, loudly)."""
    reason = _bubblewrap_unusable()
    if reason is None:
        return BUBBLEWRAP
    message = (f"WARNING: code under test runs WITHOUT real isolation ({reason}); only an in-process guard "
               "stands between it and this machine. Install bubblewrap (apt-get install bubblewrap) and allow "
               "user namespaces for isolated runs.")
    print(message, file=sys.stderr, flush=True)
    return GUARD


def _bubblewrap_unusable() -> str | None:
    if os.environ.get("USERLM_SANDBOX") == GUARD:
        return f"USERLM_SANDBOX={GUARD} was set"
    if sys.platform != "linux":
        return "bubblewrap needs Linux"
    if shutil.which("bwrap") is None:
        return "bwrap was not found"
    with tempfile.TemporaryDirectory(prefix="userlm-sandbox-") as workdir:
        Path(workdir, "program.py").write_text("print('ok')\n")
        try:
            probe = subprocess.run(_bwrap_command(workdir, "program"), capture_output=True, text=True, timeout=30,
                                   stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap did not start: {exc}"
    if probe.returncode != 0 or probe.stdout.strip() != "ok":
        return "bwrap was refused: " + (probe.stderr.strip().splitlines() or ["no reason given"])[-1]
    return None


# ---- the bubblewrap command ----------------------------------------------------------------------

#: what the sandbox sees of this machine: the system's programs and libraries, a few files of /etc
#: that programs read, and the Python installation (nothing else: no home, no project, no data sets)
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group", "nsswitch.conf",
        "alternatives", "os-release")


def _python_paths() -> list[str]:
    """The Python installation the sandboxed interpreter needs (the environment's prefix holds its
    packages), and the folder of ``sandbox_child.py``."""
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
              os.path.dirname(_CHILD)}
    kept: list[str] = []
    for path in sorted((os.path.realpath(p) for p in wanted if p and os.path.isdir(p)), key=len):
        if not any(path == k or path.startswith(k + "/") for k in kept) and not any(
                path == d or path.startswith(d + "/") for d in _SYSTEM):
            kept.append(path)
    return kept


def _hidden(kept: list[str]) -> list[str]:
    """Folders inside what the sandbox sees that it must not see: the data that ships with userlm
    (HumanEval's canonical solutions among it) lies inside the Python installation of an installed
    userlm, so it is covered by an empty read-only folder."""
    data = os.path.realpath(os.path.dirname(_DATA.__file__))
    return [data] if any(data.startswith(k + "/") for k in kept) else []


def _bwrap_command(workdir: str, role: str, *args: str, limits: Limits = Limits(), seccomp_fd: int | None = None) -> list[str]:
    command = ["bwrap"]
    for path in _SYSTEM:
        if os.path.islink(path):
            command += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            command += ["--ro-bind", path, path]
    for name in _ETC:
        if os.path.lexists(f"/etc/{name}"):
            command += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    command += ["--dev", "/dev", "--proc", "/proc", "--size", str(limits.disk_mb * 1024 * 1024), "--tmpfs", "/tmp"]
    kept = _python_paths()
    for path in kept:
        command += ["--ro-bind", path, path]
    for path in _hidden(kept):
        command += ["--tmpfs", path, "--remount-ro", path]
    for name in sorted(os.listdir(workdir)):
        command += ["--ro-bind", os.path.join(workdir, name), f"/tmp/{name}"]
    command += ["--remount-ro", "/", "--chdir", "/tmp", "--unshare-all", "--die-with-parent", "--new-session",
                "--uid", "65534", "--gid", "65534", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "PYTHONHASHSEED", "0",
                "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--setenv", "HOME", "/tmp"]
    if seccomp_fd is not None:
        command += ["--add-seccomp-fd", str(seccomp_fd)]
    return command + ["--", sys.executable, "-I", _CHILD, role, "0", *args]


# A classic-BPF seccomp filter: fork, vfork and clone without CLONE_THREAD fail with EPERM, clone3
# with ENOSYS (so that the C library falls back to clone for threads); system calls of another ABI
# (32-bit or x32 calls from a 64-bit process) all fail. Unknown machines: no filter.
_ARCH = {"x86_64": (0xC000003E, 56, 435, (57, 58)), "aarch64": (0xC00000B7, 220, 435, ())}
_X32_BIT = 0x40000000


@functools.lru_cache(maxsize=1)
def _seccomp_filter() -> bytes | None:
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return None
    audit_arch, clone, clone3, forks = arch
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    outcomes = {"allow": 0x7FFF0000, "eperm": 0x00050000 | 1, "enosys": 0x00050000 | 38}
    # (code, true target, false target, k); targets are labels or None (= the next instruction)
    program: list[tuple[int, str | None, str | None, int]] = [
        (ld, None, None, 4),  # seccomp_data.arch
        (jeq, None, "eperm", audit_arch),
        (ld, None, None, 0),  # seccomp_data.nr
        (jge, "eperm", None, _X32_BIT),
        *[(jeq, "eperm", None, nr) for nr in forks],
        (jeq, "enosys", None, clone3),
        (jeq, None, "allow", clone),
        (ld, None, None, 16),  # the low half of clone's flags
        (jset, "allow", "eperm", 0x00010000),  # CLONE_THREAD: a thread
    ]
    labels = {name: len(program) + i for i, name in enumerate(outcomes)}
    code = b""
    for here, (op, true, false, k) in enumerate(program):
        jt = 0 if true is None else labels[true] - here - 1
        jf = 0 if false is None else labels[false] - here - 1
        code += struct.pack("=HBBI", op, jt, jf, k)
    return code + b"".join(struct.pack("=HBBI", ret, 0, 0, value) for value in outcomes.values())


# ---- running -----------------------------------------------------------------------------------


def _limit_child(limits: Limits, guarded: bool) -> None:
    """In the child, before exec: hard limits; with the fallback guard also its own session and network."""
    import ctypes

    if guarded:
        os.setsid()
        try:
            ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
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


class _Sandbox:
    """One sandboxed process: its files, its command, its capped output."""

    def __init__(self, files: dict[str, str], role: str, *args: str, limits: Limits, fds: tuple[int, ...] = ()):
        self.limits = limits
        self.kind = isolation()
        self.dir = tempfile.TemporaryDirectory(prefix="userlm-sandbox-")
        self.files_dir = os.path.join(self.dir.name, "files")
        os.mkdir(self.files_dir)
        os.chmod(self.dir.name, 0o700)
        for name, text in files.items():
            with open(os.path.join(self.files_dir, name), "w", encoding="utf-8") as f:
                f.write(text)
        self.out_path = os.path.join(self.dir.name, "output.txt")
        passed = list(fds)
        seccomp = _seccomp_filter() if self.kind == BUBBLEWRAP else None
        seccomp_fd = None
        if seccomp is not None:
            seccomp_path = os.path.join(self.dir.name, "seccomp.bpf")
            with open(seccomp_path, "wb") as f:
                f.write(seccomp)
            seccomp_fd = os.open(seccomp_path, os.O_RDONLY)
            passed.append(seccomp_fd)
        if self.kind == BUBBLEWRAP:
            command = _bwrap_command(self.files_dir, role, *args, limits=limits, seccomp_fd=seccomp_fd)
            cwd = None
        else:
            command = [sys.executable, "-I", _CHILD, role, "1", *args]
            cwd = self.files_dir
            os.chmod(self.files_dir, 0o700)
        # bwrap itself is pid 1 in the sandbox, where /proc shows its environment: none of ours
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        self.started = time.perf_counter()
        try:
            with open(self.out_path, "wb") as out:
                self.process = subprocess.Popen(
                    command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    preexec_fn=functools.partial(_limit_child, limits, self.kind != BUBBLEWRAP),
                    start_new_session=self.kind == BUBBLEWRAP, close_fds=True, pass_fds=tuple(passed),
                )
        except BaseException:
            self.dir.cleanup()
            raise
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True when it ended by itself."""
        try:
            self.process.wait(timeout=max(0.0, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> str:
        """Kill whatever is left of it, remove its files, and return its capped output."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the whole group (the sandbox dies with bwrap)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        with open(self.out_path, "rb") as f:
            output = f.read(self.limits.max_output).decode("utf-8", errors="replace")
        self.dir.cleanup()
        return output


def run_program(source: str, limits: Limits = Limits()) -> RunResult:
    """Run ``source`` as a Python program in the sandbox and wait for it."""
    box = _Sandbox({"program.py": source}, "program", limits=limits)
    ended = box.wait(limits.timeout_s)
    seconds = time.perf_counter() - box.started
    returncode = box.process.returncode if ended else None
    output = box.close()
    return RunResult(returncode, output, not ended, seconds, box.kind)


def run_tests(candidate: str, entry_point: str, prelude: str, test: str, limits: Limits = Limits()) -> TestResult:
    """Run the trusted ``test`` (defining ``check``) against ``entry_point`` of the untrusted ``candidate``.

    ``prelude`` is trusted code the tests need (the task's prompt: imports and helpers). The candidate
    runs in its own sandbox; the verdict is the harness's, sent after ``check`` returned.
    """
    calls_r, calls_w = os.pipe()
    answers_r, answers_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    try:
        worker = _Sandbox({"program.py": f"{prelude}\n{candidate}\n"}, "worker", entry_point, f"{calls_r},{answers_w}",
                          limits=limits, fds=(calls_r, answers_w))
        try:
            harness = _Sandbox({"tests.json": json.dumps({"prelude": prelude, "test": test, "entry_point": entry_point})}, "harness",
                               f"{calls_w},{answers_r},{verdict_w}", limits=limits, fds=(calls_w, answers_r, verdict_w))
        except BaseException:
            worker.close()
            raise
    finally:
        for fd in (calls_r, calls_w, answers_r, answers_w, verdict_w):
            os.close(fd)
    try:
        ended = harness.wait(limits.timeout_s)
        seconds = time.perf_counter() - worker.started
        harness.close()
        output = worker.close()
        verdict = _read_verdict(verdict_r) if ended else None
    finally:
        os.close(verdict_r)
    if verdict is None:
        detail = f"the tests did not finish within {limits.timeout_s:g} s" if not ended else "the tests gave no verdict"
        return TestResult(False, detail, worker.kind, seconds, output, timed_out=not ended)
    return TestResult(verdict.get("passed") is True, "" if verdict.get("passed") is True else str(verdict.get("error", "")),
                      worker.kind, seconds, output)


def _read_verdict(fd: int) -> dict | None:
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    if len(data) < 4:
        return None
    (size,) = struct.unpack(">I", data[:4])
    try:
        verdict = json.loads(data[4:4 + size])
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None
