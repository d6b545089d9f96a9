"""Deterministic batching for local models.

While a simulation runs, a local model starts a batch only when every conversation in flight is
waiting on a local model, and only one local batch runs at a time; the model with the most
waiting requests goes first (ties: the first model registered), and a batch takes its requests
in a fixed order. Batches then fall the same way on every run, so the same seed gives the same
transcripts even though a row's floating-point results depend on the batch it shares; and every
batch is as full as it can be.

Outside a simulation (a single session, direct calls), and in simulations that also talk to a
model over HTTP (whose answers come back in no fixed order, so exact reproducibility is out of
reach anyway and waiting for the slowest reply would only cost time), batches form from
whatever is waiting.
"""

from __future__ import annotations

import asyncio
import weakref


class Gate:
    """Counts the conversations in flight and the requests waiting at each local model."""

    def __init__(self) -> None:
        self.active = 0
        self.strict = True  #: wait until every conversation in flight waits on a local model
        self.running = False
        self.waiting: dict[int, int] = {}  #: batcher id -> requests waiting (in registration order)
        self.changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def enter(self) -> None:
        self.active += 1
        await self._notify()

    async def leave(self) -> None:
        self.active -= 1
        await self._notify()

    def may_run(self, batcher_id: int) -> bool:
        if self.running or self.waiting.get(batcher_id, 0) == 0:
            return False
        if self.active == 0 or not self.strict:
            return True  # not inside a simulation, or one whose timing is not ours to fix
        if sum(self.waiting.values()) < self.active:
            return False  # someone is still busy elsewhere (an HTTP call, a Python function, ...)
        most = max(self.waiting.values())
        first = next(b for b, n in self.waiting.items() if n == most)
        return first == batcher_id


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Gate] = weakref.WeakKeyDictionary()


def gate() -> Gate:
    """The gate of the running event loop."""
    loop = asyncio.get_running_loop()
    if loop not in _gates:
        _gates[loop] = Gate()
    return _gates[loop]

