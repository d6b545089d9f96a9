"""Deterministic batching for local models.

A run makes one :class:`Lockstep` and hands it to the local models it talks to (see
:class:`~userlm.models.base.BatchesInLockstep`). While the run goes on, a local model starts a
batch only when every conversation in flight is waiting on a local model, and only one local
batch runs at a time; the model with the most waiting requests goes first (ties: the model that
joined first), and a batch takes its requests in a fixed order. Batches then fall the same way
on every run, so the same seed gives the same transcripts even though a row's floating-point
results depend on the batch it shares; and every batch is as full as it can be.

A model that has joined no run (a single session, direct calls), and a run that also talks to a
model over HTTP (whose answers come back in no fixed order, so exact reproducibility is out of
reach anyway and waiting for the slowest reply would only cost time), batch whatever is waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Lockstep:
    """When the local models of one run may start a batch. ``strict``: wait until every
    conversation in flight waits on a local model; otherwise a batch starts from whatever is
    waiting once the callers that are ready have queued."""

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self._active = 0  # conversations in flight
        self._running = False  # a local batch is running
        self._waiting: dict[object, int] = {}  # member -> requests waiting, in the order members joined
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # made inside the run's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        changed = self._condition()
        async with changed:
            changed.notify_all()

    def join(self, member: object) -> None:
        """Count ``member`` (a model's batcher) among the run's local models."""
        self._waiting.setdefault(member, 0)

    @asynccontextmanager
    async def conversation(self) -> AsyncIterator[None]:
        """Held by the runner while one conversation is in flight."""
        self._active += 1
        await self._notify()
        try:
            yield
        finally:
            self._active -= 1
            await self._notify()

    async def waiting(self, member: object, count: int) -> None:
        """``member`` now has ``count`` requests waiting."""
        self._waiting[member] = count
        await self._notify()

    @asynccontextmanager
    async def batch(self, member: object) -> AsyncIterator[None]:
        """Waits until ``member`` may run a batch, and holds the turn while it runs."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: self._may_run(member))
            self._running = True
        try:
            if not self._strict_now():
                for _ in range(3):  # let every caller that is ready queue first
                    await asyncio.sleep(0)
            yield
        finally:
            self._running = False
            await self._notify()

    def _strict_now(self) -> bool:
        return self.strict and self._active > 0

    def _may_run(self, member: object) -> bool:
        if self._running or self._waiting.get(member, 0) == 0:
            return False
        if not self._strict_now():
            return True
        if sum(self._waiting.values()) < self._active:
            return False  # someone is still busy elsewhere (an HTTP call, a Python function, ...)
        most = max(self._waiting.values())
        first = next(m for m, n in self._waiting.items() if n == most)
        return first is member
