"""A guarded simulated user as the environment of a policy being trained (the pieces the verifiers,
SkyRL-Gym and TRL integrations share).

The policy plays the assistant; the environment is the user. An :class:`Episode` is one
conversation seen from the environment's side: it opens with the user's first turn, answers each
of the policy's replies with the user's next turn, and is over when the user ends, every draft of
a turn was refused, or the user's turn limit is reached. Every episode of a process draws its turns
from one :class:`SharedUser`, one engine on an event loop of its own: the turns of many concurrent
episodes run as batches, each conversation's cache sticks to it (its handle carries its id), and
no environment loads a model of its own. ``task_reward`` makes the ``eval-assistant`` suites'
scorers rewards.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..guardrails import GuardrailConfig
from ..models.handle import ConversationHandle
from ..user import SimulatedUser, UserTurn

T = TypeVar("T")

class SharedUser:
    """One simulated user for every environment of a process, on an event loop of its own thread:
    synchronous environments call :meth:`call`, asynchronous ones await :meth:`run` from any loop."""

    def __init__(self, user: Callable[[], SimulatedUser] | SimulatedUser):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="userlm-simulated-user", daemon=True)
        self._thread.start()

        async def build() -> SimulatedUser:  # built on its loop, where its batcher will run
            return user if isinstance(user, SimulatedUser) else user()

        self.user: SimulatedUser = self.call(build())

    @property
    def name(self) -> str:
        return self.user.name

    def submit(self, work: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the user's loop and wait for it (from a thread that runs no loop of its own)."""
        return self.submit(work).result()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the user's loop, awaited from the caller's loop."""
        return await asyncio.wrap_future(self.submit(work))

    def close(self) -> None:
        """Stop the user's loop, its engine's waiting tasks cancelled first."""

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


_shared: dict[tuple[str, GuardrailConfig | None], SharedUser] = {}
_shared_lock = threading.Lock()


def shared_user(user: str | SimulatedUser, guardrails: GuardrailConfig | None = None) -> SharedUser:
    """The process's one :class:`SharedUser` for a model spec (``hf:DIR``, ``vllm:DIR``,
    ``openai:NAME``...) and guardrails: environments made with the same spec share its engine."""
    if isinstance(user, SimulatedUser):
        return SharedUser(user)
    with _shared_lock:
        if (user, guardrails) not in _shared:
            from ..models.registry import user_model

            _shared[user, guardrails] = SharedUser(lambda: SimulatedUser(user_model(user), guardrails))
        return _shared[user, guardrails]


@dataclass
class Episode:
    """One conversation between the simulated user and the policy, driven from the policy's side.
    ``messages`` are the user's view: ``user`` is the simulated user, ``assistant`` the policy."""

    user: SharedUser
    intent: str
    id: str  #: the conversation's id: the engine batches, caches and routes its turns by it
    seed: int = 0
    max_turns: int = 8  #: the most user turns
    messages: list[dict[str, str]] = field(default_factory=list)
    #: once over: user_ended, guardrail_exhausted (every draft of a turn refused) or max_turns
    end_reason: str | None = None
    notes: list[dict[str, Any]] = field(default_factory=list)  #: per user turn: attempts, refused drafts, P(end), faults

    def __post_init__(self) -> None:
        self.handle = ConversationHandle(self.id, self.seed)

    @property
    def done(self) -> bool:
        return self.end_reason is not None

    @property
    def user_turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "user")

    def replies(self) -> list[str]:
        """The policy's replies, in order."""
        return [m["content"] for m in self.messages if m["role"] == "assistant"]

    async def _turn(self) -> str | None:
        if self.user_turns >= self.max_turns:
            self.end_reason = "max_turns"
            return None
        simulated = self.user.user
        turn: UserTurn = await self.user.run(simulated.next_turn(self.intent, self.messages, seed=self.seed, conversation=self.handle))
        self.notes.append({"attempts": turn.attempts, "refused": [r.model_dump(exclude_none=True) for r in turn.rejected],
                           "end_prob": turn.end_prob, "faults": turn.faults})
        if turn.text is None:
            self.end_reason = turn.end_reason
            return None
        self.messages.append({"role": "user", "content": turn.text})
        return turn.text

    async def opening(self) -> str | None:
        """The user's first turn (None: the user ended before writing one)."""
        if self.messages:
            raise ValueError(f"episode {self.id} has already begun")
        return await self._turn()

    async def respond(self, reply: str) -> str | None:
        """The user's answer to the policy's ``reply`` (None: the episode is over; see ``end_reason``)."""
        if self.done:
            raise ValueError(f"episode {self.id} is over ({self.end_reason})")
        self.messages.append({"role": "assistant", "content": reply})
        return await self._turn()

    def conclude(self, reply: str) -> None:
        """Record the policy's last ``reply``, written when the framework's own turn limit ended the
        episode without asking the user: the reward reads every reply."""
        self.messages.append({"role": "assistant", "content": reply})
        if not self.done:
            self.end_reason = "max_turns"

    def opening_now(self) -> str | None:
        """:meth:`opening`, for an environment that runs no event loop."""
        return asyncio.run(self.opening()) if _no_loop() else run_in_thread(self.opening)

    def respond_now(self, reply: str) -> str | None:
        """:meth:`respond`, for an environment that runs no event loop."""
        return asyncio.run(self.respond(reply)) if _no_loop() else run_in_thread(lambda: self.respond(reply))


def _no_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def run_in_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end from synchronous code called inside a running loop (a framework
    that calls a synchronous ``step`` from its own async code): on a thread of its own."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


def task_reward(task: Any) -> Callable[[list[str]], float]:
    """An ``eval-assistant`` task's scorer as a reward: the score of the policy's last answer
    attempt (0 without one), as ``eval-assistant`` scores a conversation."""
    from ..evaluation.assistants.tasks import extract_answer, grade

    def reward(replies: list[str]) -> float:
        for reply in reversed(replies):
            answer = extract_answer(task, reply)
            if answer is not None:
                return grade(task, answer).value
        return 0.0

    return reward


@dataclass(frozen=True)
class Scenario:
    """What one episode is about: the user's intent, and the reward of a task behind it (if any)."""

    id: str
    intent: str
    reward: Callable[[list[str]], float] | None = None  #: the task's score of the policy's replies


def scenarios(intents: str | list[str] | None = None, tasks: str | None = None, limit: int | None = None) -> list[Scenario]:
    """The episodes' scenarios: ``intents`` (an intents file, as ``simulate --intents`` reads, or
    intent texts), or ``tasks`` (an ``eval-assistant`` suite: ``gsm8k``, ``humaneval``,
    ``sharded`` or ``SUITE:PATH``), whose scorers are the rewards; the first ``limit`` of them."""
    from ..errors import UserError

    if (intents is None) == (tasks is None):
        raise UserError("give the environment intents or tasks (one of them).")
    found: list[Scenario]
    if tasks is not None:
        from ..evaluation.assistants.tasks import load_suite

        found = [Scenario(t.id, t.intent, task_reward(t)) for t in load_suite(tasks)]
    elif isinstance(intents, str):
        from ..intents import load_intents

        found = [Scenario(i.id, i.text or "") for i in load_intents(intents)]
    else:
        found = [Scenario(str(k), text) for k, text in enumerate(intents or [])]
    if not found:
        raise UserError("the environment has no scenarios: its intents or tasks are empty.")
    return found[:limit] if limit is not None else found
