"""The program that runs inside the sandbox (standard library only; started by path, never imported
by userlm's own process).

Three roles, one per process::

    python -I sandbox_child.py program GUARD          # run program.py (today's plain runs)
    python -I sandbox_child.py worker GUARD ENTRY IN,OUT              # load program.py, answer calls of ENTRY
    python -I sandbox_child.py harness GUARD OUT,IN,VERDICT          # run tests.json's tests against the worker

A test verdict never comes from untrusted code. The harness runs the task's own test code and
reaches the candidate function only through a pipe to the worker, a separate sandboxed process:
each call's arguments go out, and what comes back is rebuilt as plain built-in values (numbers,
strings, bytes, lists, tuples, dicts, sets). Nothing that overrides ``__eq__`` (or any other method)
crosses, and nothing the candidate does to its own process (exiting early, hooks, tracing) can reach
the harness, which writes ``passed`` to its own verdict pipe only after ``check`` returned.
"""

import builtins
import json
import os
import struct
import sys
from typing import Any

MAX_MESSAGE = 16 * 1024 * 1024
MAX_DEPTH = 64

# ---- the optional in-process guard (only where no kernel isolation is to be had) ----------------


def _install_guard() -> None:
    root = os.path.realpath(os.getcwd())

    def inside(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)

    def guard(event, args):
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            if isinstance(path, int) or path is None:
                return
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            writing = writing or (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC))
            if writing and not inside(path):
                raise PermissionError("sandbox: writing outside the working directory is not allowed")
        elif event.startswith("socket.") and event != "socket.gethostname":
            raise PermissionError("sandbox: network access is not allowed")
        elif event in ("os.fork", "os.forkpty", "os.system", "os.posix_spawn", "os.exec", "os.spawn", "subprocess.Popen", "pty.spawn"):
            raise PermissionError("sandbox: starting processes is not allowed")
        elif event in ("os.kill", "os.killpg") and args and args[0] not in (os.getpid(), 0):
            raise PermissionError("sandbox: signalling other processes is not allowed")
        elif event.startswith("ctypes.") or event == "gc.get_objects" or event == "gc.get_referrers":
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event in ("os.remove", "os.rmdir", "os.rename", "os.link", "os.symlink", "os.chmod", "os.chown",
                       "os.truncate", "os.mkdir", "os.utime", "shutil.rmtree"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            dir_fds = [a for a in args[2:] if isinstance(a, int) and a != -1]
            if dir_fds or not all(inside(p) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    sys.addaudithook(guard)


# ---- plain values across the pipe ----------------------------------------------------------------


class NotPlain(TypeError):
    pass


def encode(value, depth: int = 0):
    """A JSON-ready form of a plain value; anything else raises :class:`NotPlain`."""
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return {"i": str(value)}
    if kind is float:
        return {"f": repr(value)}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind is tuple:
        return {"t": [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "fs": [encode(v, depth + 1) for v in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [repr(value.real), repr(value.imag)]}
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic) and kind.__module__ == "numpy":
        return encode(numpy.generic.item(value), depth + 1)
    raise NotPlain(f"a value of type {kind.__name__} is not a plain value")


def decode(data, depth: int = 0):
    """Rebuild a plain value from :func:`encode`'s form, trusting nothing about it."""
    if depth > MAX_DEPTH:
        raise NotPlain("nested too deeply")
    if data is None or type(data) is bool or type(data) is str:
        return data
    if type(data) is list:
        return [decode(v, depth + 1) for v in data]
    if type(data) is not dict or len(data) != 1:
        raise NotPlain("not a plain value")
    (tag, body), = data.items()
    if tag == "i" and type(body) is str:
        return int(body)
    if tag == "f" and type(body) is str:
        return float(body)
    if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) is str for x in body):
        return complex(float(body[0]), float(body[1]))
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise NotPlain("not a plain value")
    if tag == "t":
        return tuple(decode(v, depth + 1) for v in body)
    if tag == "s":
        return {decode(v, depth + 1) for v in body}
    if tag == "fs":
        return frozenset(decode(v, depth + 1) for v in body)
    if tag == "d":
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise NotPlain("not a plain value")
            out[decode(pair[0], depth + 1)] = decode(pair[1], depth + 1)
        return out
    raise NotPlain("not a plain value")


def send(fd: int, message) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def receive(fd: int):
    head = _read_exactly(fd, 4)
    (size,) = struct.unpack(">I", head)
    if size > MAX_MESSAGE:
        raise ConnectionError("the candidate's answer is too large")
    return json.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the candidate's process ended before answering")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---- the roles -------------------------------------------------------------------------------------


def run_program(guard: bool) -> None:
    source = open("program.py", encoding="utf-8").read()
    if guard:
        _install_guard()
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})


def run_worker(guard: bool, entry_point: str, fds: str) -> None:
    calls_in, answers_out = (int(fd) for fd in fds.split(","))
    source = open("program.py", encoding="utf-8").read()
    if guard:
        _install_guard()
    namespace: dict[str, Any] = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
        function = namespace[entry_point]
    except BaseException as exc:  # the candidate's code failed to load: every call says so
        function, load_error = None, f"{type(exc).__name__}: {exc}"
    while True:
        try:
            args, kwargs = decode(receive(calls_in))
        except ConnectionError:
            return
        if function is None:
            send(answers_out, {"error": ["ImportError", load_error[:2000]]})
            continue
        try:
            answer = {"value": encode(function(*args, **kwargs))}
        except NotPlain as exc:
            answer = {"error": ["TypeError", f"the function returned {exc}"]}
        except BaseException as exc:
            answer = {"error": [type(exc).__name__, str(exc)[:2000]]}
        send(answers_out, answer)


def run_harness(guard: bool, fds: str) -> None:
    calls_out, answers_in, verdict_out = (int(fd) for fd in fds.split(","))
    spec = json.load(open("tests.json", encoding="utf-8"))
    if guard:
        _install_guard()

    def candidate(*args, **kwargs):
        send(calls_out, [encode(list(args)), encode(dict(kwargs))])
        answer = receive(answers_in)
        if type(answer) is dict and "value" in answer:
            return decode(answer["value"])
        name, message = answer["error"] if type(answer) is dict and "error" in answer else ("RuntimeError", "a malformed answer")
        kind = getattr(builtins, str(name), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(f"(in the candidate) {message}")
        raise RuntimeError(f"(in the candidate) {name}: {message}")

    namespace: dict[str, Any] = {"__name__": "__tests__", "__builtins__": builtins}
    try:
        exec(compile(spec["prelude"], "prompt.py", "exec"), namespace)
        namespace[spec["entry_point"]] = candidate  # tests that name the function mean the candidate's
        exec(compile(spec["test"], "test.py", "exec"), namespace)
        namespace["check"](candidate)
    except BaseException as exc:
        send(verdict_out, {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        return
    send(verdict_out, {"passed": True})


if __name__ == "__main__":
    role, guarded = sys.argv[1], sys.argv[2] == "1"
    if role == "program":
        run_program(guarded)
    elif role == "worker":
        run_worker(guarded, sys.argv[3], sys.argv[4])
    elif role == "harness":
        run_harness(guarded, sys.argv[3])
    else:
        raise SystemExit(f"unknown role {role}")
