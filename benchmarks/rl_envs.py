"""B7: user turns per second for RL environments sharing one simulated user, 64 at a time against one at a time.

    python benchmarks/rl_envs.py                  # 64 environments x 4 user turns, B1's user model
    python benchmarks/rl_envs.py --environments 16 --rounds 3

Each environment is an :class:`userlm.integrations.environment.Episode` (what the verifiers,
SkyRL-Gym and TRL integrations run), the policy's replies fixed text (so that only the user's side
is measured). Baseline: the environments stepped one at a time (what a framework gets with a model
per environment, without its memory cost). Ours: all of them stepped at once against the one
shared engine, whose drafts then run as batches. Every row starts from a model with no
conversation cached (``forget_conversations``); rows alternate, the median of the rounds is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_models, intents, machine, save

REPLY = "Sure. Tell me more about what you need, and I will help you step by step."


async def _play(shared, texts: list[str], turns: int, together: bool, round_: int) -> tuple[int, float]:
    from userlm.integrations.environment import Episode

    episodes = [Episode(shared, text, f"r{round_}-{together}-{k}", seed=k, max_turns=turns) for k, text in enumerate(texts)]

    async def one(episode: Episode) -> None:
        text = await episode.opening()
        while text is not None:
            text = await episode.respond(REPLY)

    started = time.perf_counter()
    if together:
        await asyncio.gather(*(one(e) for e in episodes))
    else:
        for e in episodes:
            await one(e)
    seconds = time.perf_counter() - started
    return sum(e.user_turns for e in episodes), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--environments", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from userlm.guardrails import GuardrailConfig
    from userlm.integrations.environment import SharedUser
    from userlm.models.base import SamplingSettings
    from userlm.models.hf.local import LocalUserModel
    from userlm.user import SimulatedUser

    user_dir, _ = build_models(Path(os.environ.get("USERLM_BENCH_MODELS", "/tmp/userlm-bench-models")))
    shared = SharedUser(lambda: SimulatedUser(LocalUserModel(str(user_dir), sampling=SamplingSettings(max_new_tokens=32)),
                                              GuardrailConfig(min_turns=1)))
    texts = intents(args.environments)
    model = shared.user.model
    load_before = os.getloadavg()
    shared.call(_play(shared, texts[:4], 2, True, -1))  # warm
    rows: dict[str, list[tuple[int, float]]] = {"one at a time": [], f"{args.environments} at once": []}
    for r in range(args.rounds):
        for name, together in (("one at a time", False), (f"{args.environments} at once", True)):
            model.forget_conversations()
            rows[name].append(shared.call(_play(shared, texts, args.turns, together, r)))
            print(name, rows[name][-1], flush=True)
    result = {"machine": machine(), "load_before": load_before, "environments": args.environments, "turns": args.turns,
              "rounds": args.rounds, "rows": {}}
    base = statistics.median(t / s for t, s in rows["one at a time"])
    for name, runs in rows.items():
        rate = statistics.median(t / s for t, s in runs)
        result["rows"][name] = {"user_turns_per_s": rate, "x_one_at_a_time": rate / base, "runs": [[t, s] for t, s in runs]}
    result["load_after"] = os.getloadavg()
    print(save("rl_envs", result))
    shared.close()


if __name__ == "__main__":
    main()
