"""Inspect AI: a guarded userlm simulated user holds a multi-turn conversation with the model under
test, and Inspect's scorers judge the result.

    from inspect_ai import Task, task
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import includes
    from userlm.integrations.inspect_solver import simulated_user, user_ended

    @task
    def lasagna(user: str = "hf:microsoft/UserLM-8b"):
        return Task(dataset=[Sample(input="You want a vegan lasagna recipe that takes under an hour.", target="lasagna")],
                    solver=simulated_user(user, max_turns=6), scorer=[includes(), user_ended()])

    inspect eval lasagna.py --model openai/gpt-4o-mini

Each sample's input (or its ``intent`` metadata) is the user's intent. The user turns go into
``state.messages`` as user messages and the model under test answers each with ``generate``; every
turn's guardrail notes (refused drafts with reasons, attempts, P(end)) go into Inspect's transcript,
and ``state.metadata["userlm"]`` says how the conversation ended. ``stop`` is the scorer hook: an
async check of the state after each reply that ends the conversation (``task_solved``) when true.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from inspect_ai.log import transcript
from inspect_ai.model import ChatMessageUser
from inspect_ai.scorer import Score, Target, mean, scorer
from inspect_ai.solver import Generate, Solver, TaskState, solver

from ..conversation import Conversation
from ..guardrails import GuardrailConfig
from ..intents import Intent
from ..models.base import ChatReply
from ..models.handle import ConversationHandle
from ..simulation import LoopHooks, converse, new_conversation
from ..user import SimulatedUser, UserTurn


def _simulated(user: str | SimulatedUser, guardrails: GuardrailConfig | None, base_url: str | None = None,
               api_key: str | None = None) -> SimulatedUser:
    if isinstance(user, SimulatedUser):
        return user
    from ..models.http.openai_compat import Endpoint
    from ..models.registry import ProviderOptions, user_model

    endpoint = Endpoint(base_url=base_url, api_key=api_key, flag="simulated_user(user_base_url=...)")
    return SimulatedUser(user_model(user, ProviderOptions(endpoint=endpoint)), guardrails)


class _ModelUnderTest:
    """Inspect's model under test as the assistant of the conversation loop: each user turn goes
    into ``state.messages`` and ``generate`` answers it."""

    name = "inspect"

    def __init__(self, state: TaskState, generate: Generate):
        self.state, self.generate = state, generate

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        self.state.messages.append(ChatMessageUser(content=messages[-1]["content"]))
        self.state = await self.generate(self.state)
        return ChatReply(text=self.state.output.completion)


@solver
def simulated_user(user: str | SimulatedUser, *, max_turns: int = 6, guardrails: GuardrailConfig | None = None, seed: int = 0,
                   stop: Callable[[TaskState], Awaitable[bool]] | None = None, intent_field: str = "intent",
                   user_base_url: str | None = None, user_api_key: str | None = None) -> Solver:
    """A conversation between the simulated ``user`` (a spec such as ``hf:microsoft/UserLM-8b``, or a
    :class:`~userlm.user.SimulatedUser`) and the model under test, up to ``max_turns`` user turns.
    A user model on a server of its own (``openai:NAME``: ``vllm serve``, or ``userlm``'s own
    ``--user`` behind any OpenAI-compatible completions API) is reached at ``user_base_url`` with
    ``user_api_key``, never through ``OPENAI_BASE_URL``, which Inspect's model under test reads.
    The conversation is ``<sample id>#<epoch - 1>`` with its seed derived as ``userlm simulate
    --seed SEED`` derives it, so a sample replays the simulation of the intent of that id."""
    sim = _simulated(user, guardrails, user_base_url, user_api_key)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        intent = Intent(id=str(state.sample_id), text=state.metadata.get(intent_field) or state.input_text)
        state.messages = [m for m in state.messages if m.role == "system"]  # the input is the user's intent, not a turn
        model = _ModelUnderTest(state, generate)
        conv = new_conversation(intent, max(state.epoch - 1, 0), sim, model, seed)

        def log(conv: Conversation, turn: UserTurn) -> None:
            transcript().info({"user_turn": len(conv.user_turns()) + 1, "attempts": turn.attempts, "end_prob": turn.end_prob,
                               "refused": [r.model_dump(exclude_none=True) for r in turn.rejected],
                               "ended": turn.text is None}, source="userlm")

        async def solved(conv: Conversation) -> bool:
            return stop is not None and await stop(model.state)

        await converse(conv, sim, model, max_turns, LoopHooks(on_user_turn=log, after_reply=solved))
        if conv.error is not None:
            raise RuntimeError(f"userlm: {conv.id}: {conv.error}")
        refused = sum(len(m.rejected or []) for m in conv.user_turns()) + len((conv.final_turn.rejected or []) if conv.final_turn else [])
        model.state.metadata["userlm"] = {"user_model": sim.name, "end_reason": conv.end_reason, "refused_drafts": refused,
                                          "user_turns": len(conv.user_turns())}
        return model.state

    return solve


@scorer(metrics=[mean()])
def user_ended() -> Any:
    """1 when the simulated user ended the conversation itself (it got what it came for, as far as
    it can tell), 0 when the turn limit, a solved check or the guardrails ended it."""

    async def score(state: TaskState, target: Target) -> Score:
        outcome = state.metadata.get("userlm") or {}
        return Score(value=1.0 if outcome.get("end_reason") == "user_ended" else 0.0,
                     explanation=f"ended by {outcome.get('end_reason', 'unknown')}")

    return score
