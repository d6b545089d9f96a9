"""Real peers for tests (``transformers serve`` on 127.0.0.1, Ray nodes), and how tests wait.

Tests run on busy machines: they wait on conditions, never on a wall-clock budget that assumes
an idle machine. ``HANG_S`` is a ceiling that only catches a hang. Every process a test starts
is stopped by its own process id (and what it started, by its session), never machine-wide."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

#: how long a test waits on a condition before calling it a hang (a busy machine is slow, not stuck)
HANG_S = float(os.environ.get("USERLM_TEST_HANG_S", 900))


def wait_for(condition: Callable[[], object], what: str, *, process: subprocess.Popen | None = None,
             log: Path | None = None, ceiling_s: float = HANG_S, every_s: float = 0.1) -> None:
    """Wait until ``condition()`` is true. Fails at once when ``process`` exits first, and after
    ``ceiling_s`` as a hang, with the end of ``log`` when given."""
    deadline = time.monotonic() + ceiling_s
    while not condition():
        exited = process is not None and process.poll() is not None
        if exited or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            why = f"exited with {process.returncode}" if exited else f"not done after {ceiling_s:.0f} s (a hang)"  # type: ignore[union-attr]
            raise AssertionError(f"waiting for {what}: {why}\n{tail}")
        time.sleep(every_s)


def session_processes(session: int) -> list[int]:
    """The processes of a session (a process a test started with ``start_new_session=True`` leads
    its own; what it starts stays in it even when it changes process group, as Ray's workers do)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[3]) == session:
                pids.append(int(entry))
    return pids


def stop_session(process: subprocess.Popen, ceiling_s: float = HANG_S) -> None:
    """Stop a process a test started as a session leader: SIGTERM to it, then SIGKILL to whatever
    of its session is left. Nothing outside that session is touched."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=ceiling_s)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_processes(process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.poll() is None:
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """Whether a server answers ``url`` with 200 now."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def transformers_serve(log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start ``transformers serve`` (it serves any model by path) in a session of its own and return
    it and its /v1 URL, once it answers /health; stop it with :func:`stop_session`. Fails with the
    end of its log if it exits or hangs first."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/health"), "transformers serve to answer", process=proc, log=log_path, every_s=0.5)
    except AssertionError:
        stop_session(proc)
        raise
    return proc, f"{url}/v1"
