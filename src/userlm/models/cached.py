"""A chat model asked single prompts, whose answers are kept on disk: the one prompt-to-answer
cache (the LLM judge's answers, the intents written for conversations).

Each answer is appended to a JSONL file, keyed by the model's name and the exact prompt, and
flushed to disk before it is used, so a stopped run resumes without asking anything twice. A
line cut off by a crash is skipped, and that prompt is asked again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from ..conversation import Usage
from .base import ChatModel, close


class CachedChat:
    """``model`` asked one prompt at a time (at most ``concurrency`` at once), answers cached in ``path``."""

    def __init__(self, model: ChatModel, path: str | Path, *, concurrency: int = 16):
        self.model, self.name, self.path = model, model.name, Path(path)
        self.answers: dict[str, str] = {}
        self.calls = 0  #: answers fetched from the model (not from the cache)
        self.usage = Usage()  #: the tokens of the answers fetched from the model (those from the cache cost nothing now)
        self.hits = 0  #: answers taken from the cache
        self._lock = asyncio.Lock()
        self._limit = asyncio.Semaphore(concurrency)
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                answer = row.get("answer", row.get("intent"))  # "intent": files written before answers were kept whole
                if isinstance(answer, str) and "key" in row:
                    self.answers[row["key"]] = answer

    def key(self, prompt: str) -> str:
        return hashlib.sha256(f"{self.name}\n{prompt}".encode()).hexdigest()

    async def ask(self, prompt: str, *, check: Callable[[str], object] | None = None) -> str:
        """The model's answer to ``prompt`` (stripped), from the cache when it is there. With
        ``check``, an answer is kept only when ``check(answer)`` does not raise (a malformed
        answer is asked again on the next run rather than repeated from the cache)."""
        key = self.key(prompt)
        if key in self.answers:
            self.hits += 1
            return self.answers[key]
        async with self._limit:
            reply = await self.model.reply([{"role": "user", "content": prompt}], seed=0)
        answer = reply.text.strip()
        if check is not None:
            check(answer)
        line = json.dumps({"key": key, "model": self.name, "prompt": prompt, "answer": answer}, ensure_ascii=False) + "\n"
        async with self._lock:
            self.answers[key] = answer
            self.calls += 1
            self.usage.add(reply.prompt_tokens, reply.completion_tokens)
            await asyncio.to_thread(self._append, line)  # the disk write and its fsync, off the event loop
        return answer

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    async def aclose(self) -> None:
        await close(self.model)
