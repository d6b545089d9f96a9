"""Untrusted code runs in isolation, and a test verdict cannot be forged.

Every program here is hostile: it either must score 0 (forging a pass) or must be contained
(escaping the sandbox). CI installs bubblewrap and sets USERLM_REQUIRE_SANDBOX=1, so there a
missing sandbox fails these tests instead of skipping them.
"""

from __future__ import annotations

import ast
import os
import socket
import textwrap
import threading
import time

import pytest

from userlm.evaluation.assistants import sandbox
from userlm.evaluation.assistants.sandbox import BUBBLEWRAP, GUARD, Limits, run_program, run_tests
from userlm.evaluation.assistants.tasks import grade, load_humaneval

FAST = Limits(timeout_s=5, cpu_s=3, memory_mb=512)


@pytest.fixture(scope="module")
def bwrap():
    if sandbox.isolation() != BUBBLEWRAP:
        if os.environ.get("USERLM_REQUIRE_SANDBOX") == "1":
            pytest.fail("bubblewrap is required here (USERLM_REQUIRE_SANDBOX=1) but cannot be used")
        pytest.skip("bubblewrap is not usable on this machine")


@pytest.fixture
def fallback(monkeypatch, capsys):
    """The in-process guard, as on a machine without bubblewrap."""
    monkeypatch.setenv("USERLM_SANDBOX", GUARD)
    sandbox.isolation.cache_clear()
    yield
    sandbox.isolation.cache_clear()


@pytest.fixture(scope="module")
def task0(shared_data):
    """HumanEval/0 (has_close_elements): a real task with its real tests."""
    return load_humaneval(shared_data("humaneval/HumanEval.jsonl.gz"))[0]


def wrong(task, trick: str) -> str:
    """A wrong solution to ``task`` (returns None) carrying ``trick``."""
    return task.text + "    return None\n" + textwrap.dedent(trick)


# ---- a pass cannot be forged -----------------------------------------------------------------

FORGERIES = {
    "os._exit at import": "import os\nos._exit(0)\n",
    "sys.exit at import": "import sys\nsys.exit(0)\n",
    "raise SystemExit": "raise SystemExit\n",
    "os._exit inside the function": "",  # replaced below: the body itself exits
    "atexit hook": "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "excepthook": "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
    "a thread that exits": """
        import os, threading, time
        def _bye():
            time.sleep(0.05)
            os._exit(0)
        threading.Thread(target=_bye, daemon=True).start()
        """,
    "a signal handler": """
        import os, signal
        signal.signal(signal.SIGALRM, lambda *a: os._exit(0))
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        """,
    "settrace on check": """
        import os, sys, threading
        def _tracer(frame, event, arg):
            if frame.f_code.co_name == "check":
                os._exit(0)
            return _tracer
        sys.settrace(_tracer)
        threading.settrace(_tracer)
        """,
    "setprofile": """
        import os, sys
        sys.setprofile(lambda frame, event, arg: os._exit(0) if event == "return" else None)
        """,
    "equal to everything": """
        class _Any:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
        def has_close_elements(numbers, threshold):
            return _Any()
        """,
    "an int that equals everything": """
        class _Int(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        def has_close_elements(numbers, threshold):
            return _Int(1)
        """,
    "a bool subclass": """
        class _B:
            __class__ = bool
            def __eq__(self, other): return True
        def has_close_elements(numbers, threshold):
            return _B()
        """,
    "forged verdicts on every descriptor": """
        import json, os, struct
        for _fd in range(3, 64):
            for _msg in ({"passed": True}, {"value": True}):
                _data = json.dumps(_msg).encode()
                try:
                    os.write(_fd, struct.pack(">I", len(_data)) + _data)
                except OSError:
                    pass
        os._exit(0)
        """,
    "builtins patched": """
        import builtins
        builtins.AssertionError = type("Nope", (Exception,), {})
        builtins.abs = lambda x: 0
        builtins.isinstance = lambda *a: True
        """,
    "a monkeypatched json in the worker": """
        import json
        json.loads = lambda *a, **k: {"value": True}
        json.dumps = lambda *a, **k: '{"passed": true}'
        """,
    "KeyboardInterrupt": "raise KeyboardInterrupt\n",
    "print a pass": "print('passed'); print('{\"passed\": true}')\n",
    "stack inspection": """
        import sys
        def has_close_elements(numbers, threshold):
            frame = sys._getframe()
            while frame.f_back is not None:
                frame = frame.f_back
            frame.f_globals["check"] = lambda candidate: None
            return None
        """,
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_forged_pass_scores_zero(bwrap, task0, name):
    code = task0.text + "    import os\n    os._exit(0)\n" if name == "os._exit inside the function" else wrong(task0, FORGERIES[name])
    result = grade(task0, code, FAST)
    assert result.value == 0.0, name
    assert result.isolation == BUBBLEWRAP


def test_the_all_passing_shortcut_from_the_report_scores_zero_on_every_task(bwrap, shared_data):
    tasks = load_humaneval(shared_data("humaneval/HumanEval.jsonl.gz"))[:20]
    for task in tasks:
        ep = task.reference["entry_point"]
        assert grade(task, f"def {ep}(*a, **k):\n    return None\nimport os; os._exit(0)\n", FAST).value == 0.0


def test_a_correct_solution_still_passes_with_hostile_extras(bwrap, task0):
    code = task0.text + task0.reference["canonical_solution"] + "import atexit, os\natexit.register(lambda: os._exit(1))\n"
    assert grade(task0, code, FAST).value == 1.0


def test_plain_values_cross_exactly(bwrap):
    prelude = "def f(x):\n    '''echo'''\n"
    test = textwrap.dedent("""
        def check(candidate):
            for value in [0, -1, 10**30, 1.5, float('inf'), -0.0, 'text', b'by', None, True, [1, (2, 3)],
                          {'a': {1, 2}}, {(1, 2): frozenset({3})}, 2 + 3j]:
                back = candidate(value)
                assert back == value and type(back) is type(value), (value, back)
    """)
    result = run_tests("def f(x):\n    return x\n", "f", prelude, test, FAST)
    assert result.passed, result.detail


def test_numpy_scalars_count_as_their_plain_value(bwrap):
    pytest.importorskip("numpy")
    result = run_tests("import numpy\ndef f():\n    return numpy.int64(3)\n", "f", "def f():\n    pass\n",
                       "def check(candidate):\n    assert candidate() == 3\n", FAST)
    assert result.passed, result.detail


def test_a_candidate_that_never_answers_times_out(bwrap):
    result = run_tests("def f():\n    while True:\n        pass\n", "f", "", "def check(c):\n    c()\n", Limits(timeout_s=2))
    assert not result.passed and result.timed_out and result.seconds < 5


# ---- the sandbox holds -------------------------------------------------------------------------

def test_a_plain_program_runs_and_its_output_comes_back(bwrap):
    result = run_program("print(sum(range(10)))")
    assert result.ok and result.output == "45\n" and result.isolation == BUBBLEWRAP


@pytest.mark.parametrize("how", [
    "os.rename('inside.txt', TARGET)",
    "os.replace('inside.txt', TARGET)",
    "os.link('inside.txt', TARGET)",
    "os.symlink('inside.txt', TARGET)",
    "open(os.path.basename(TARGET), 'w', opener=lambda p, f: os.open(p, f, dir_fd=os.open(os.path.dirname(TARGET), os.O_RDONLY))).write('x')",
    "open(TARGET, 'w').write('x')",
    "os.mkdir(TARGET)",
    "import shutil; shutil.copy('inside.txt', TARGET)",
])
def test_nothing_is_written_outside_the_sandbox(bwrap, tmp_path, how):
    target = tmp_path / "escaped"
    program = f"import os\nTARGET = {str(target)!r}\nopen('inside.txt', 'w').write('x')\n{how}\n"
    result = run_program(program, FAST)
    assert not result.ok and not os.path.lexists(target), result.output


def test_files_outside_cannot_be_truncated_or_changed(bwrap, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for how in ("os.truncate(V, 0)", "open(V, 'a').write('x')", "os.chmod(V, 0o777)", "os.utime(V, (0, 0))", "os.unlink(V)"):
        run_program(f"import os\nV = {str(victim)!r}\n{how}\n", FAST)
    assert victim.read_text() == "keep me" and oct(victim.stat().st_mode & 0o777) != "0o777"


def test_home_directories_and_the_parents_secrets_are_out_of_sight(bwrap, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-userlm-test-secret")
    program = textwrap.dedent("""
        import os
        print('pids', [p for p in os.listdir('/proc') if p.isdigit()], 'end')
        print(sorted(os.environ))
        for pid in os.listdir('/proc'):
            if pid.isdigit():
                for name in ('environ', 'cmdline'):
                    try:
                        print(open(f'/proc/{pid}/{name}', 'rb').read())
                    except OSError:
                        pass
        print(sorted(os.listdir('/root') if os.path.isdir('/root') else []) + (os.listdir('/home') if os.path.isdir('/home') else []))
    """)
    result = run_program(program, Limits(timeout_s=10, max_output=10**7))
    assert "sk-userlm-test-secret" not in result.output
    assert f"'{os.getpid()}'" not in result.output.split("end", 1)[0]
    seen = ast.literal_eval(result.output.strip().splitlines()[-1])
    assert not (set(os.listdir("/root")) - {".pyenv"}) & set(seen)


def test_nothing_of_this_machine_but_the_system_and_python_is_in_sight(bwrap, tmp_path, shared_data):
    secret = tmp_path / "notes.txt"
    secret.write_text("a secret of this machine")
    program = textwrap.dedent(f"""
        import os
        for path in ({str(secret)!r}, "/etc/shadow", "/etc/ssh", {str(shared_data("humaneval/HumanEval.jsonl.gz"))!r}):
            print(path, os.path.exists(path))
        import numpy  # the environment's packages are there
        print("numpy", numpy.__name__)
    """)
    result = run_program(program, FAST)
    assert result.ok, result.output
    assert result.output.count(" False\n") == 4 and "numpy numpy" in result.output


def test_a_candidate_copying_the_reference_solution_from_the_data_set_scores_zero(bwrap, task0, shared_data):
    """The data set with the canonical solutions is on this machine, but not in the sandbox."""
    copier = f"""
        import gzip, json
        for _line in gzip.open({str(shared_data("humaneval/HumanEval.jsonl.gz"))!r}, "rt"):
            _row = json.loads(_line)
            if _row["task_id"] == "HumanEval/0":
                exec(_row["prompt"] + _row["canonical_solution"])
        """
    assert grade(task0, wrong(task0, copier), FAST).value == 0.0


def test_the_copy_that_ships_with_an_installed_userlm_is_out_of_sight(bwrap, task0, monkeypatch):
    """Installed from a wheel, userlm (and its built-in HumanEval, canonical solutions included)
    lies inside the Python installation the sandbox sees: the package is in sight, its data is not."""
    import userlm
    from userlm.data import builtin_path

    package = os.path.realpath(os.path.dirname(userlm.__file__))
    seen = sandbox._python_paths()
    monkeypatch.setattr(sandbox, "_python_paths", lambda: [*seen, package])  # as in site-packages
    data = builtin_path("humaneval")
    result = run_program(f"import os\nprint(os.path.exists({os.path.join(package, '__init__.py')!r}), os.path.exists({str(data)!r}))", FAST)
    assert result.ok and result.output.split() == ["True", "False"], result.output
    copier = f"""
        import gzip, json
        for _line in gzip.open({str(data)!r}, "rt"):
            _row = json.loads(_line)
            if _row["task_id"] == "HumanEval/0":
                exec(_row["prompt"] + _row["canonical_solution"])
        """
    assert grade(task0, wrong(task0, copier), FAST).value == 0.0


def test_the_parent_cannot_be_signalled_or_its_memory_read(bwrap):
    parent = os.getpid()
    result = run_program(f"import os, signal\nos.kill({parent}, signal.SIGKILL)\n", FAST)
    assert not result.ok  # and pytest lives on
    result = run_program(f"print(open('/proc/{parent}/mem', 'rb').read(16))", FAST)
    assert not result.ok


def test_no_new_processes_by_any_route(bwrap):
    for how in (
        "os.fork()",
        "os.posix_spawn('/bin/sh', ['sh', '-c', 'true'], {})",
        "import subprocess; subprocess.run(['true'])",
        "os.system('true') == 0 or (_ for _ in ()).throw(OSError('failed'))",
        "import _posixsubprocess; _posixsubprocess.fork_exec(['/bin/sh', '-c', 'true'], [b'/bin/sh'], True, (), None, None, -1, -1, -1, -1, -1, -1, -1, -1, False, False, None, None, None, -1, None, False)",
    ):
        result = run_program(f"import os\n{how}\nprint('started')", FAST)
        assert "started" not in result.output, how
    threads = run_program("import threading\nt = threading.Thread(target=print, args=('thread ran',))\nt.start(); t.join()", FAST)
    assert threads.output == "thread ran\n"


@pytest.mark.skipif(__import__("platform").machine() != "x86_64", reason="the x32 system-call numbers are x86-64's")
def test_system_calls_of_another_abi_are_refused(bwrap):
    """fork by its x32 number: refused by the filter (EPERM), not left to the kernel."""
    program = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "print(libc.syscall(0x40000000 + 57), os.strerror(ctypes.get_errno()))")
    assert run_program(program, FAST).output.strip() == "-1 Operation not permitted"


def _sandboxed_processes() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if b"sandbox_child.py" in cmdline:
            found.append(pid)
    return found


def test_nothing_outlives_the_run(bwrap):
    """A program killed at its timeout, and one that returns while a thread still runs: afterwards
    no process of either is left on this machine."""
    assert run_program("import time\ntime.sleep(60)", Limits(timeout_s=1)).timed_out
    result = run_program("import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\nprint('back')",
                         Limits(timeout_s=2))
    assert result.output == "back\n"
    time.sleep(0.2)
    assert _sandboxed_processes() == []


def test_total_disk_use_is_capped(bwrap):
    program = textwrap.dedent("""
        written = 0
        try:
            for i in range(40):
                with open(f'f{i}', 'wb') as f:
                    f.write(b'x' * 7 * 1024 * 1024)
                written += 7
        finally:
            print(written)
    """)
    result = run_program(program, Limits(timeout_s=20, disk_mb=32))
    assert not result.ok and int(result.output.strip().splitlines()[0]) <= 32


def test_no_network_even_to_a_server_on_this_machine(bwrap):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')", FAST)
    server.close()
    assert "connected" not in result.output and not accepted


def test_an_infinite_loop_is_stopped(bwrap):
    started = time.perf_counter()
    result = run_program("while True:\n    pass", FAST)
    assert not result.ok and time.perf_counter() - started < 8


def test_a_sleeping_program_is_killed_at_the_wall_clock_timeout(bwrap):
    result = run_program("import time\ntime.sleep(60)", Limits(timeout_s=1))
    assert result.timed_out and result.returncode is None and result.seconds < 5


def test_a_memory_bomb_fails_inside_the_sandbox(bwrap):
    result = run_program("x = bytearray(8 * 1024 ** 3)\nprint('allocated')", FAST)
    assert not result.ok and "allocated" not in result.output


def test_huge_output_is_capped(bwrap):
    result = run_program("print('x' * 50_000_000)", Limits(max_output=1000, file_size_mb=1))
    assert len(result.output) <= 1000


@pytest.mark.parametrize("code", ["import sys\nsys.exit(3)", "raise ValueError('boom')", "import ctypes\nctypes.CDLL(None).abort()"])
def test_failures_are_reported_not_raised(bwrap, code):
    assert not run_program(code, FAST).ok


# ---- without bubblewrap: said loudly, recorded, and the verdicts still hold ------------------------

def test_the_fallback_is_announced_once_and_recorded(fallback, capsys, task0):
    assert sandbox.isolation() == GUARD
    sandbox.isolation()
    assert capsys.readouterr().err.count("WITHOUT real isolation") == 1
    result = grade(task0, task0.text + task0.reference["canonical_solution"], FAST)
    assert result.value == 1.0 and result.isolation == GUARD


@pytest.mark.parametrize("name", ["os._exit at import", "equal to everything", "a thread that exits", "settrace on check"])
def test_forgeries_fail_under_the_fallback_too(fallback, task0, name):
    assert grade(task0, wrong(task0, FORGERIES[name]), FAST).value == 0.0


def test_the_fallback_guard_refuses_writes_outside_and_new_processes(fallback, tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_program(f"open({str(target)!r}, 'w').write('x')", FAST)
    assert not result.ok and not target.exists() and result.isolation == GUARD
    assert "starting processes is not allowed" in run_program("import os\nos.fork()", FAST).output
