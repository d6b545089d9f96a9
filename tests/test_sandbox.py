"""Untrusted code runs in a limited process: hostile programs are contained."""

from __future__ import annotations

import time

import pytest

from userlm.evaluation.sandbox import Limits, run_program

FAST = Limits(timeout_s=3, cpu_s=2, memory_mb=512)


def test_a_plain_program_runs_and_its_output_comes_back():
    result = run_program("print(sum(range(10)))")
    assert result.ok and result.output == "45\n"


def test_an_infinite_loop_is_stopped():
    started = time.perf_counter()
    result = run_program("while True:\n    pass", FAST)
    assert not result.ok and time.perf_counter() - started < 6


def test_a_sleeping_program_is_killed_at_the_wall_clock_timeout():
    result = run_program("import time\ntime.sleep(60)", Limits(timeout_s=1))
    assert result.timed_out and result.returncode is None and result.seconds < 5


def test_a_fork_bomb_cannot_start_processes():
    result = run_program("import os\nwhile True:\n    os.fork()", FAST)
    assert not result.ok and "starting processes is not allowed" in result.output
    result = run_program("import subprocess\nsubprocess.run(['sleep', '100'])", FAST)
    assert not result.ok and "starting processes is not allowed" in result.output


def test_a_memory_bomb_fails_inside_the_sandbox():
    result = run_program("x = bytearray(8 * 1024 ** 3)\nprint('allocated')", FAST)
    assert not result.ok and "allocated" not in result.output


def test_writing_outside_its_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_program(f"open({str(target)!r}, 'w').write('x')", FAST)
    assert not result.ok and not target.exists()
    assert run_program("open('inside.txt', 'w').write('fine')\nprint(open('inside.txt').read())", FAST).output == "fine\n"


def test_no_network():
    result = run_program("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))", FAST)
    assert not result.ok and "network access is not allowed" in result.output


def test_it_cannot_kill_its_parent():
    result = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", FAST)
    assert not result.ok and "signalling other processes is not allowed" in result.output  # and pytest lives on


def test_huge_output_is_capped():
    result = run_program("print('x' * 50_000_000)", Limits(max_output=1000, file_size_mb=1))
    assert len(result.output) <= 1000


def test_ctypes_is_refused():
    result = run_program("import ctypes\nctypes.CDLL(None).abort()", FAST)
    assert not result.ok and "not allowed" in result.output


@pytest.mark.parametrize("code", ["import sys\nsys.exit(3)", "raise ValueError('boom')"])
def test_failures_are_reported_not_raised(code):
    assert not run_program(code, FAST).ok
