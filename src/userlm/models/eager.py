"""Eager start of chosen coroutines on Python 3.11, as asyncio's eager tasks do from 3.12.

aiohttp writes a request's body from a task of its own. From Python 3.12 it starts that task
eagerly, so the bytes leave at once; on 3.11 the task waits for the event loop's next round,
behind every answer that arrived in the same burst, which holds requests back when many
conversations are in flight (B3 in benchmarks/ measures it). :func:`start_eagerly` gives 3.11 the same
behaviour for the coroutine functions it is given, and nothing else: every other task is made
as the loop would make it.
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any


def _task(coro: Coroutine, loop: asyncio.AbstractEventLoop, context: Any) -> asyncio.Task:
    """A task as the loop would make it (a context only where one was given: Python 3.10's Task takes none)."""
    extra: dict[str, Any] = {"context": context} if context is not None else {}
    return asyncio.Task(coro, loop=loop, **extra)


def start_eagerly(loop: asyncio.AbstractEventLoop, functions: list[Callable[..., Coroutine]]) -> bool:
    """Install on ``loop`` a task factory that runs tasks of ``functions`` up to their first
    suspension at once. Only on Python before 3.12 (later ones have eager tasks) and on a loop
    without a task factory of its own; returns whether it was installed."""
    if sys.version_info >= (3, 12) or loop.get_task_factory() is not None:
        return False
    codes = {function.__code__ for function in functions}

    def factory(loop: asyncio.AbstractEventLoop, coro: Coroutine, context: Any = None) -> asyncio.Future:
        if getattr(coro, "cr_code", None) not in codes:
            return _task(coro, loop, context)
        future = loop.create_future()
        try:
            pending = coro.send(None)
        except StopIteration as done:
            future.set_result(done.value)
            return future  # done already, as an eager task would be
        except asyncio.CancelledError:
            future.cancel()
            return future
        except Exception as exc:
            future.set_exception(exc)
            return future
        return _task(_resume(coro, pending), loop, context)

    loop.set_task_factory(factory)  # type: ignore[arg-type]  # typeshed's factory type is narrower than asyncio's call
    return True


@types.coroutine
def _resume(coro: Coroutine, pending: Any) -> Generator[Any, None, Any]:
    """Go on with ``coro`` from the future it waits on (what its first step yielded): the task
    that runs this hands that future to the loop, then passes each wake-up or cancellation on."""
    while True:
        thrown = None
        try:
            yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # a cancellation (or any error) thrown into the task
            thrown = exc
        try:
            pending = coro.send(None) if thrown is None else coro.throw(thrown)
        except StopIteration as done:
            return done.value
