"""Prompt, clean stops for long commands: the first Ctrl-C (or SIGTERM) cancels the run, which keeps
every finished record; whatever is still busy after 2 seconds (a batch on a local model, a hung
Python assistant in its thread) is abandoned, and the process exits 130 with the resume hint. A
second Ctrl-C exits at once. Records are whole lines written under
:data:`userlm.conversation.WRITE_LOCK`, so a stop never leaves half a record.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

GRACE_S = 2.0
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """The user stopped the command (Ctrl-C or SIGTERM)."""


def _hard_exit(hint: str) -> None:
    from ..conversation import WRITE_LOCK

    WRITE_LOCK.acquire(timeout=5)  # never in the middle of a record
    try:
        print(f"\nuserlm: interrupted; {hint}", file=sys.stderr, flush=True)
        sys.stdout.flush()
    finally:
        os._exit(EXIT_INTERRUPTED)


def run_async(coro: Coroutine[Any, Any, T], hint: str = "finished conversations are saved; run the same command again to go on.") -> T:
    """Run ``coro`` to completion, or until the first Ctrl-C/SIGTERM (then :class:`Interrupted`)."""
    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(coro)
    loop = asyncio.new_event_loop()
    main = loop.create_task(coro)
    signals = []

    def on_signal(signum: int, frame: object) -> None:
        signals.append(signum)
        if len(signals) > 1:
            _hard_exit(hint)
        loop.call_soon_threadsafe(main.cancel)
        watchdog = threading.Timer(GRACE_S, _hard_exit, args=(hint,))
        watchdog.daemon = True
        watchdog.start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            return loop.run_until_complete(main)
        except asyncio.CancelledError:
            if signals:
                raise Interrupted(hint) from None
            raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            _cancel_the_rest(loop)  # background tasks (a local model's batcher) end with the run
            if not signals:  # after a stop, threads still busy are abandoned: do not wait for them
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    rest = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in rest:
        task.cancel()
    if rest:
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))


def exit_interrupted(message: str) -> None:
    """Say how to go on and leave now, without waiting for abandoned threads."""
    from tqdm import tqdm

    tqdm.write(f"userlm: interrupted; {message}", file=sys.stderr)  # on a line of its own, under any open bar
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)
