"""An LLM judge whose answers are cached on disk, so an evaluation can be stopped and resumed
without paying for the same judgement twice.

Any :class:`~userlm.models.base.ChatModel` can judge (``openai:gpt-4o``, a local ``hf:``
checkpoint, a Python function). Each answer is appended to a JSONL cache, keyed by the judge's
name and the exact prompt, and flushed to disk before it is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from pathlib import Path

from ..models.base import ChatModel, close

_VERDICT = re.compile(r"\b(YES|NO)\b")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


class CachedJudge:
    """A chat model asked single questions, answers cached in ``cache_path``."""

    def __init__(self, model: ChatModel, cache_path: str | Path, *, concurrency: int = 16):
        self.model = model
        self.name = model.name
        self.path = Path(cache_path)
        self._answers: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._limit = asyncio.Semaphore(concurrency)
        self.calls = 0  #: answers fetched from the model in this run (not from the cache)
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by a crash; that question is asked again
                self._answers[row["key"]] = row["answer"]

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.name}\n{prompt}".encode()).hexdigest()

    async def ask(self, prompt: str) -> str:
        key = self.key(prompt)
        if key in self._answers:
            return self._answers[key]
        async with self._limit:
            reply = await self.model.reply([{"role": "user", "content": prompt}], seed=0)
        answer = reply.text.strip()
        async with self._lock:
            self._answers[key] = answer
            self.calls += 1
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "judge": self.name, "prompt": prompt, "answer": answer}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        return answer

    async def yes_no(self, prompt: str) -> bool | None:
        """The judge's YES/NO verdict (the last one it states), or None when it gives neither."""
        found = _VERDICT.findall((await self.ask(prompt)).upper())
        return found[-1] == "YES" if found else None

    async def score(self, prompt: str, *, top: float = 100.0) -> float | None:
        """The last number in the judge's answer divided by ``top`` (clamped to [0, 1])."""
        found = _NUMBER.findall(await self.ask(prompt))
        return min(1.0, max(0.0, float(found[-1]) / top)) if found else None

    async def aclose(self) -> None:
        await close(self.model)
