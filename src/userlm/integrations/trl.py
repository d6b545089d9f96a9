"""TRL: GRPO training of an assistant with the guarded simulated user in the loop (``pip install "userlm[rl]"``).

    from trl import GRPOConfig, GRPOTrainer
    from userlm.integrations.trl import UserRollout

    rollout = UserRollout("hf:microsoft/UserLM-8b", tasks="gsm8k", max_turns=3, limit=200)
    trainer = GRPOTrainer(model="Qwen/Qwen3-0.6B", reward_funcs=rollout.reward, train_dataset=rollout.dataset(),
                          rollout_func=rollout, args=GRPOConfig(num_generations=4, max_completion_length=512))
    trainer.train()

Each dataset prompt is an intent (the policy never sees it). A rollout is a whole conversation:
the simulated user's first turn is the policy's prompt, and the completion is every policy reply
and every user turn after it, as the policy's chat template lays them out. The user's tokens are
masked from the loss (``env_mask``), so the policy learns from its own tokens alone. The
policy's replies are sampled by the model being trained, batched across the rollouts; the
user's turns come from one shared engine (:mod:`userlm.integrations.environment`), the turns of
all rollouts as one batch. ``rollout.reward`` is the reward function: the task's scorer of the
policy's last answer attempt (with ``tasks=``), or the ``scorer`` given, called with the
episode. The conversation stops when the user ends it, every draft of a turn was refused,
``max_turns`` user turns were written, or the completion reaches ``max_completion_length``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

from ..guardrails import GuardrailConfig
from ..user import derive_seed
from .environment import Episode, Scenario, scenarios, shared_user


def _intent(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m.get("role") == "user")


class UserRollout:
    """A ``rollout_func`` for TRL's ``GRPOTrainer`` (and the ``dataset`` and ``reward`` that go with it)."""

    def __init__(self, user: str, *, intents: str | list[str] | None = None, tasks: str | None = None,
                 scorer: Callable[[Episode], float] | None = None, max_turns: int = 4, reply_tokens: int | None = None,
                 seed: int = 0, limit: int | None = None, guardrails: GuardrailConfig | None = None):
        self.user = shared_user(user, guardrails)
        self.cases: dict[str, Scenario] = {c.intent: c for c in scenarios(intents, tasks, limit)}
        self.scorer, self.max_turns, self.reply_tokens, self.seed = scorer, max_turns, reply_tokens, seed
        self.rollouts = 0
        self.episodes: list[Episode] = []  #: the last call's episodes, in the order of its prompts

    def dataset(self):
        """The intents as a dataset whose ``prompt`` column is each intent."""
        from datasets import Dataset

        return Dataset.from_list([{"prompt": c.intent, "scenario": c.id} for c in self.cases.values()])

    def reward(self, completions: list[Any], userlm_score: list[float], **kwargs: Any) -> list[float]:
        """The reward function to pass ``GRPOTrainer``: each rollout's score (see the module's text)."""
        return list(userlm_score)

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list]:
        import torch

        tok, args = trainer.processing_class, trainer.args
        tok = getattr(tok, "tokenizer", tok)
        model = trainer.accelerator.unwrap_model(trainer.model)
        stops = _stops(model, tok)
        episodes = []
        for prompt in prompts:
            intent = _intent(prompt)
            case = self.cases.get(intent)
            if case is None:  # a prompt of the trainer's own dataset: named by its text, so its seed is its own
                case = Scenario("prompt-" + hashlib.blake2b(intent.encode(), digest_size=8).hexdigest(), intent)
            self.rollouts += 1
            episodes.append((case, Episode(self.user, case.intent, f"{case.id}#{self.rollouts}", derive_seed(self.seed, case.id),
                                           max_turns=self.max_turns)))
        openings = _gather([e.opening() for _, e in episodes])
        chats = [[{"role": "user", "content": text or ""}] for text in openings]
        prompt_ids = [_render(tok, chat, True) for chat in chats]
        sequences = [list(p) for p in prompt_ids]
        completion: list[list[int]] = [[] for _ in episodes]
        logprobs: list[list[float]] = [[] for _ in episodes]
        mask: list[list[int]] = [[] for _ in episodes]
        budget = args.max_completion_length
        active = [k for k, text in enumerate(openings) if text is not None]
        while active:
            cap = min(budget - len(completion[k]) for k in active)
            if self.reply_tokens is not None:
                cap = min(cap, self.reply_tokens)
            if cap < 1:
                break
            with torch.no_grad():
                drawn = _generate(model, tok, [sequences[k] for k in active], cap, args.temperature, args.top_p, stops)
            for k, (ids, lps) in zip(active, drawn):
                sequences[k] += ids
                completion[k] += ids
                logprobs[k] += lps
                mask[k] += [1] * len(ids)
                chats[k].append({"role": "assistant", "content": tok.decode(ids, skip_special_tokens=True).strip()})
            answers = _gather([episodes[k][1].respond(chats[k][-1]["content"]) for k in active])
            still = []
            for k, text in zip(active, answers):
                if text is None or len(completion[k]) >= budget:
                    continue
                before = _render(tok, chats[k], False)
                chats[k].append({"role": "user", "content": text})
                after = _render(tok, chats[k], True)
                piece = after[len(before):] if after[: len(before)] == before else tok.encode(text, add_special_tokens=False)
                if completion[k][-1] not in stops:  # the cap cut the reply: its turn still ends as the template ends it
                    piece = before[-1:] + piece
                piece = piece[: budget - len(completion[k])]
                sequences[k] = list(prompt_ids[k]) + completion[k] + piece
                completion[k] += piece
                logprobs[k] += [0.0] * len(piece)
                mask[k] += [0] * len(piece)  # the user's tokens: not the policy's to learn
                if len(completion[k]) < budget:
                    still.append(k)
            active = still
        self.episodes = [e for _, e in episodes]
        scores = []
        for case, episode in episodes:
            if self.scorer is not None:
                scores.append(float(self.scorer(episode)))
            else:
                scores.append(case.reward(episode.replies()) if case.reward is not None else 0.0)
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "logprobs": logprobs, "env_mask": mask,
                "userlm_score": scores, "end_reason": [e.end_reason or "completion_budget" for _, e in episodes],
                "user_turns": [e.user_turns for _, e in episodes]}


def _gather(work: list) -> list:
    async def together():
        return await asyncio.gather(*work)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(together())
    from .environment import run_in_thread

    return run_in_thread(together)


def _render(tok: Any, chat: list[dict[str, str]], opening: bool) -> list[int]:
    ids = tok.apply_chat_template(chat, add_generation_prompt=opening, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _stops(model: Any, tok: Any) -> set[int]:
    """The tokens that end the policy's turn."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tok.eos_token_id}


def _generate(model: Any, tok: Any, sequences: list[list[int]], cap: int, temperature: float, top_p: float,
              stops: set[int]) -> list[tuple[list[int], list[float]]]:
    """The policy's next reply for each sequence, sampled in one batch (left padded): its tokens up
    to and with the end of its turn, and each token's log-probability under the sampling."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences])
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    out = model.generate(input_ids=ids.to(model.device), attention_mask=attention.to(model.device), do_sample=True,
                         temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=cap, pad_token_id=pad,
                         output_scores=True, return_dict_in_generate=True)
    new = out.sequences[:, width:].tolist()
    logps = torch.stack(out.scores, dim=1).float().log_softmax(-1)
    drawn = []
    for b, row in enumerate(new):
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        drawn.append((row[:end], [logps[b, i, t].item() for i, t in enumerate(row[:end])]))
    return drawn
