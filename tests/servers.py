"""Real OpenAI-compatible servers for tests: ``transformers serve`` on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def transformers_serve(log_path: Path, wait_s: float = 90) -> tuple[subprocess.Popen, str]:
    """Start ``transformers serve`` (it serves any model by path) and return it and its /v1 URL,
    once it answers /health. Raises RuntimeError with the end of its log if it does not start."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    log = open(log_path, "w+")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + wait_s
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, f"{url}/v1"
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    log.seek(0)
    raise RuntimeError(f"transformers serve did not start:\n{log.read()[-3000:]}")
