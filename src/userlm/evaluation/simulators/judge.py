"""An LLM judge whose answers are cached on disk, so an evaluation can be stopped and resumed
without paying for the same judgement twice.

Any :class:`~userlm.models.base.ChatModel` can judge (``openai:gpt-4o``, a local ``hf:``
checkpoint, a Python function). Each answer is appended to a JSONL cache, keyed by the judge's
name and the exact prompt, and flushed to disk before it is used.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...models.base import ChatModel
from ...models.cached import CachedChat

_VERDICT = re.compile(r"\b(YES|NO)\b")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


class CachedJudge(CachedChat):
    """A chat model asked single questions, answers cached in ``cache_path``."""

    def __init__(self, model: ChatModel, cache_path: str | Path, *, concurrency: int = 16):
        super().__init__(model, cache_path, concurrency=concurrency)

    async def yes_no(self, prompt: str) -> bool | None:
        """The judge's YES/NO verdict (the last one it states), or None when it gives neither."""
        found = _VERDICT.findall((await self.ask(prompt)).upper())
        return found[-1] == "YES" if found else None

    async def score(self, prompt: str, *, top: float = 100.0) -> float | None:
        """The last number in the judge's answer divided by ``top`` (clamped to [0, 1])."""
        found = _NUMBER.findall(await self.ask(prompt))
        return min(1.0, max(0.0, float(found[-1]) / top)) if found else None

