"""SkyRL-Gym: a guarded simulated user as a ``BaseTextEnv`` (``pip install "userlm[rl]"``).

    import skyrl_gym
    import userlm.integrations.skyrl  # registers "userlm"

    env = skyrl_gym.make("userlm", env_config={"user": "hf:microsoft/UserLM-8b", "max_turns": 4},
                         extras={"intent": "You want a vegan lasagna recipe that takes under an hour."})
    observations, _ = env.init([])            # the user's first turn
    step = env.step("Sure! Here is a recipe: ...")  # the user's answer, the reward, done

Importing this module registers the environment as ``userlm`` (as SkyRL-Gym registers its own).
``env_config`` holds ``user`` (a model spec, as ``--user`` takes), ``max_turns`` (user turns) and
``seed``; each episode's ``extras`` hold its ``intent`` (or a ``task``: an ``eval-assistant``
suite spec and an id, ``{"suite": "gsm8k", "id": "..."}``, whose scorer is the reward, given when
the episode ends). The prompt ``init`` is given (the dataset's) keeps its system messages; the
user's first turn follows them. Every environment of the process draws its turns from one shared
engine (:mod:`userlm.integrations.environment`), so many environments stepped at once run as batches.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput
from skyrl_gym.envs.registration import register, registry

from ..errors import UserError
from ..user import derive_seed
from .environment import Episode, shared_user, task_reward

ENV_ID = "userlm"
_episodes = itertools.count()


def _setting(config: Any, name: str, default: Any) -> Any:
    if config is None:
        return default
    value = config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)
    return default if value is None else value


@functools.cache
def _suite(spec: str) -> dict[str, Any]:
    from ..evaluation.assistants.tasks import load_suite

    return {t.id: t for t in load_suite(spec)}


def _task(spec: dict[str, Any]):
    tasks = _suite(str(spec["suite"]))
    if str(spec.get("id")) not in tasks:
        raise UserError(f"extras.task names {spec.get('id')!r}, which suite {spec['suite']!r} does not hold.")
    return tasks[str(spec["id"])]


class SimulatedUserTextEnv(BaseTextEnv):
    """One conversation: the policy's action is the assistant's reply, the observation the user's next turn."""

    def __init__(self, env_config: Any = None, extras: dict[str, Any] | None = None):
        super().__init__()
        extras = extras or {}
        self.max_turns = int(_setting(env_config, "max_turns", 8))
        task = _task(extras["task"]) if extras.get("task") else None
        intent = task.intent if task is not None else extras.get("intent")
        if not intent:
            raise UserError('the userlm environment needs extras["intent"] (or extras["task"]).')
        self.reward_of = task_reward(task) if task is not None else None
        seed = int(_setting(env_config, "seed", 0))
        name = str(extras.get("id", task.id if task is not None else next(_episodes)))
        self.episode = Episode(shared_user(str(_setting(env_config, "user", "hf:microsoft/UserLM-8b"))), intent,
                               f"{name}#{next(_episodes)}", derive_seed(seed, name), max_turns=self.max_turns)

    def init(self, prompt: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, Any]]:
        opening = self.episode.opening_now()
        system = [m for m in prompt if m.get("role") == "system"]
        return system + [{"role": "user", "content": opening or ""}], {"ended": opening is None, **self._metadata()}

    def step(self, action: str) -> BaseTextEnvStepOutput:
        self.turns += 1
        turn = self.episode.respond_now(action)
        done = turn is None
        reward = self.reward_of(self.episode.replies()) if done and self.reward_of is not None else 0.0
        return BaseTextEnvStepOutput(observations=[] if done else [{"role": "user", "content": turn}], reward=reward, done=done,
                                     metadata=self._metadata())

    def _metadata(self) -> dict[str, Any]:
        return {"end_reason": self.episode.end_reason, "user_turns": self.episode.user_turns,
                "userlm": self.episode.notes[-1] if self.episode.notes else None}

    def get_metrics(self) -> dict[str, Any]:
        return {"user_turns": self.episode.user_turns, "user_ended": float(self.episode.end_reason == "user_ended")}


if ENV_ID not in registry:
    register(id=ENV_ID, entry_point=f"{__name__}:SimulatedUserTextEnv")
