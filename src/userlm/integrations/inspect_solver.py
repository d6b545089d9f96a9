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

from ..guardrails import GuardrailConfig
from ..user import SimulatedUser, derive_seed


def _simulated(user: str | SimulatedUser, guardrails: GuardrailConfig | None) -> SimulatedUser:
    if isinstance(user, SimulatedUser):
        return user
    from ..models.registry import user_model

    return SimulatedUser(user_model(user), guardrails)


@solver
def simulated_user(user: str | SimulatedUser, *, max_turns: int = 6, guardrails: GuardrailConfig | None = None, seed: int = 0,
                   stop: Callable[[TaskState], Awaitable[bool]] | None = None, intent_field: str = "intent") -> Solver:
    """A conversation between the simulated ``user`` (a spec such as ``hf:microsoft/UserLM-8b``, or a
    :class:`~userlm.user.SimulatedUser`) and the model under test, up to ``max_turns`` user turns."""
    sim = _simulated(user, guardrails)

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        intent = state.metadata.get(intent_field) or state.input_text
        conversation: list[dict[str, str]] = []
        state.messages = [m for m in state.messages if m.role == "system"]  # the input is the user's intent, not a turn
        conversation_seed = derive_seed(seed, state.sample_id, state.epoch)
        end_reason, refused = "max_turns", 0
        for number in range(1, max_turns + 1):
            turn = await sim.next_turn(intent, conversation, seed=conversation_seed)
            refused += len(turn.rejected)
            transcript().info({"user_turn": number, "attempts": turn.attempts, "end_prob": turn.end_prob,
                               "refused": [r.model_dump(exclude_none=True) for r in turn.rejected],
                               "ended": turn.text is None}, source="userlm")
            if turn.text is None:
                end_reason = turn.end_reason or "guardrail_exhausted"
                break
            state.messages.append(ChatMessageUser(content=turn.text))
            conversation.append({"role": "user", "content": turn.text})
            state = await generate(state)
            conversation.append({"role": "assistant", "content": state.output.completion})
            if stop is not None and await stop(state):
                end_reason = "task_solved"
                break
        state.metadata["userlm"] = {"user_model": sim.name, "end_reason": end_reason, "refused_drafts": refused,
                                    "user_turns": sum(1 for m in conversation if m["role"] == "user")}
        return state

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
