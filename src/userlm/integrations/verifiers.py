"""verifiers (Prime Intellect): a guarded simulated user as a ``vf.MultiTurnEnv`` (``pip install "userlm[rl]"``).

    from userlm.integrations.verifiers import load_environment

    env = load_environment(user="hf:microsoft/UserLM-8b", tasks="gsm8k", max_turns=4, limit=50)

The policy plays the assistant. Each rollout opens with the simulated user's first turn (written
for the row's intent, which the policy never sees), and every ``env_response`` is the user's
next turn, drafted under the guardrails; the rollout is complete when the user ends, every draft
of a turn was refused, or ``max_turns`` replies were written. Every environment in a process
draws its turns from one shared engine (see :mod:`userlm.integrations.environment`): concurrent
rollouts run as batches, each conversation sticking to its cache.

The rubric's reward is ``task_score``: the ``eval-assistant`` suite's scorer of the policy's last
answer attempt (with ``tasks=``), or the ``scorer`` given, called with the episode
(:class:`~userlm.integrations.environment.Episode`: its messages, replies, end reason and the
guardrails' notes). ``user_ended`` and ``user_turns`` are recorded as metrics (weight 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import verifiers as vf

from ..guardrails import GuardrailConfig
from ..user import derive_seed
from .environment import Episode, Scenario, SharedUser, scenarios, shared_user


def _text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") for p in content)
    return content or ""


class SimulatedUserEnv(vf.MultiTurnEnv):
    """A multi-turn environment whose every environment turn is the guarded simulated user's."""

    def __init__(self, user: SharedUser, cases: list[Scenario], *, max_turns: int = 8, seed: int = 0,
                 scorer: Callable[[Episode], float] | None = None, **kwargs: Any):
        from datasets import Dataset

        self.user, self.cases, self.seed = user, {c.id: c for c in cases}, seed
        self.scorer = scorer
        rows = [{"question": c.intent, "answer": "", "info": {"scenario": c.id}} for c in cases]
        rubric = vf.Rubric(funcs=[self.task_score, self.user_ended, self.user_turns], weights=[1.0, 0.0, 0.0])
        super().__init__(dataset=Dataset.from_list(rows), rubric=rubric, max_turns=max_turns, **kwargs)

    def episode(self, state: vf.State) -> Episode:
        """The rollout's episode, with the policy's last reply in it (the one written when the turn
        limit came, which no ``env_response`` saw)."""
        episode: Episode = state["userlm"]
        if len(state["trajectory"]) > len(episode.replies()):
            episode.conclude("".join(_text(m) for m in state["trajectory"][-1]["completion"]))
        return episode

    async def setup_state(self, state: vf.State) -> vf.State:
        from verifiers.utils.message_utils import normalize_messages

        case = self.cases[state["info"]["scenario"]]
        episode = Episode(self.user, case.intent, f"{case.id}#{state['trajectory_id']}", derive_seed(self.seed, case.id),
                          max_turns=self.max_turns)
        state["userlm"] = episode
        opening = await episode.opening()
        system = [m for m in state["prompt"] if getattr(m, "role", None) == "system" or (isinstance(m, dict) and m.get("role") == "system")]
        # the policy sees its own system prompt (if any) and the user's first turn, never the intent
        state["prompt"] = system + normalize_messages([{"role": "user", "content": opening or ""}], field_name="userlm opening")
        if opening is None:
            state["final_env_response"] = []
        return state

    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs: Any) -> vf.Messages:
        episode: Episode = state["userlm"]
        turn = await episode.respond(_text(messages[-1]))
        if turn is None:
            state["final_env_response"] = []
            return []
        return [vf.UserMessage(content=turn)]

    async def task_score(self, state: vf.State, **kwargs: Any) -> float:
        episode = self.episode(state)
        case = self.cases[state["info"]["scenario"]]
        if self.scorer is not None:
            return float(self.scorer(episode))
        return case.reward(episode.replies()) if case.reward is not None else 0.0

    async def user_ended(self, state: vf.State, **kwargs: Any) -> float:
        return float(self.episode(state).end_reason == "user_ended")

    async def user_turns(self, state: vf.State, **kwargs: Any) -> float:
        return float(self.episode(state).user_turns)


def load_environment(user: str = "hf:microsoft/UserLM-8b", *, intents: str | list[str] | None = None, tasks: str | None = None,
                     scorer: Callable[[Episode], float] | None = None, max_turns: int = 8, seed: int = 0, limit: int | None = None,
                     guardrails: GuardrailConfig | None = None, **kwargs: Any) -> SimulatedUserEnv:
    """The environment verifiers loads by name: the simulated user ``user`` (a model spec, as
    ``--user`` takes), over ``intents`` or ``tasks`` (see :func:`~userlm.integrations.environment.scenarios`)."""
    return SimulatedUserEnv(shared_user(user, guardrails), scenarios(intents, tasks, limit), max_turns=max_turns, seed=seed,
                            scorer=scorer, **kwargs)
