"""One retry policy for every HTTP call, and a circuit breaker per endpoint.

Transient (retried): 5xx, 429, timeouts, dropped or reset connections, bodies cut off or not JSON,
answers without choices. Each retry waits ``Retry-After`` when the server gives one, else an
exponential backoff with jitter. ``max_retries = N`` means at most N + 1 attempts. A request that
still fails counts against its endpoint's breaker; after ``breaker`` such failures in a row with no
success in between, the run stops with one sentence (:class:`~userlm.errors.ConfigurationError`)
instead of filling the output with error records.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ConfigurationError

T = TypeVar("T")


class TransientError(Exception):
    """A failure worth another try."""

    retry_after: float | None = None


class ServerError(TransientError):
    """The server answered 5xx."""


class RateLimited(TransientError):
    """The server answered 429."""


class RequestTimeout(TransientError):
    """No answer in time."""


class ConnectionLost(TransientError):
    """The connection failed, was reset, or the body was cut off."""


class MalformedResponse(TransientError):
    """A 200 whose body is not the JSON the endpoint promises (not JSON, no choices, ...)."""


class RequestRejected(Exception):
    """A 4xx other than 401/403/404/429: the request itself is wrong; not retried."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  #: attempts = max_retries + 1
    base_s: float = 0.5  #: first backoff
    cap_s: float = 30.0  #: longest backoff
    max_retry_after_s: float = 60.0  #: longest Retry-After honoured
    breaker: int = 8  #: failed requests in a row (no success between) that stop the run

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        return min(self.cap_s, self.base_s * 2 ** attempt) * rng.uniform(0.5, 1.0)


class Breaker:
    """Counts requests that failed for good, in a row; a success resets it."""

    def __init__(self, what: str, limit: int):
        self.what, self.limit = what, limit
        self.failures = 0
        self.successes = 0
        self.tripped: ConfigurationError | None = None  #: once open, every later request fails at once

    def check(self) -> None:
        if self.tripped is not None:
            raise self.tripped

    def success(self) -> None:
        self.failures = 0
        self.successes += 1

    def failure(self, exc: Exception) -> None:
        self.failures += 1
        if self.limit and self.failures >= self.limit:
            self.tripped = ConfigurationError(
                f"{self.what} failed {self.failures} requests in a row with no success in between (last: "
                f"{type(exc).__name__}: {exc}); the run stopped. Finished conversations are kept: fix the server and "
                "run the same command again.")
            raise self.tripped from exc


_JITTER = random.Random()


async def with_retries(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, breaker: Breaker) -> T:
    """``attempt()`` until it succeeds, raises something not transient, or the policy gives up."""
    last: TransientError | None = None
    for number in range(policy.max_retries + 1):
        breaker.check()
        if number:
            await asyncio.sleep(policy.delay(number - 1, last.retry_after if last else None, _JITTER))
            breaker.check()
        try:
            result = await attempt()
        except TransientError as exc:
            last = exc
            continue
        breaker.success()
        return result
    assert last is not None
    final = type(last)(f"{last} (gave up after {policy.max_retries + 1} attempts)")
    breaker.failure(final)
    raise final


def parse_json(body: bytes) -> Any:
    import json

    try:
        return json.loads(body)
    except ValueError:
        raise MalformedResponse(f"the answer is not JSON ({len(body)} bytes: {body[:80]!r})") from None
