"""A Ray cluster of the test's own on 127.0.0.1, for the tests that run replicas on one.

Ray's token authentication is on, as a user's cluster has it: one token for every node and for
this process, set when this module is imported, before Ray is (Ray reads the mode once per
process). Ray 2.60's head turns it on by default, and a node that joins without the mode and the
token is refused.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servers import free_port, stop_session, wait_for

AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
_SAVED_AUTH = {key: os.environ.get(key) for key in AUTH}
os.environ.update(AUTH)


@contextmanager
def local_cluster(temp: Path, nodes: int = 2, cpus: int = 2) -> Iterator[str]:
    """A head and ``nodes - 1`` more nodes on 127.0.0.1, each with ``cpus`` CPUs, on a port and in a
    folder of their own; this process joins them; yields the head's address. Each node is a
    ``ray start --block`` in a session of its own, so stopping it stops what it started and
    nothing else on the machine (a user's cluster goes on)."""
    import ray

    ray_bin = Path(sys.executable).with_name("ray")
    port = free_port()
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", str(cpus), "--disable-usage-stats", "--block"]
    address = f"127.0.0.1:{port}"
    started: list[subprocess.Popen] = []
    try:
        _ray_node(ray_bin, temp / "head.log", ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp),
                                               *common], env, started)
        for k in range(1, nodes):
            _ray_node(ray_bin, temp / f"node{k}.log", ["--address", address, *common], env, started)
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        yield address
    finally:
        ray.shutdown()
        for node in reversed(started):
            stop_session(node)
        for key, value in _SAVED_AUTH.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ray_node(ray_bin: Path, log: Path, args: list[str], env: dict[str, str], started: list[subprocess.Popen]) -> None:
    """``ray start ARGS`` in a session of its own, once it says the node is up; on failure, fail
    with the node's own last lines."""
    with open(log, "w") as out:
        node = subprocess.Popen([str(ray_bin), "start", "--node-ip-address", "127.0.0.1", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    started.append(node)
    wait_for(lambda: "Ray runtime started" in log.read_text(errors="replace"), f"`ray start {' '.join(args)}`", process=node, log=log)
