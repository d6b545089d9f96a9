"""A stand-in assistant that needs no model: it answers with the real assistant reply whose
user turn shares the most words with the latest user message (``userlm demo`` uses it)."""

from __future__ import annotations

import re
from itertools import islice

from ..base import ChatReply


class RetrievalAssistant:
    """Answers with the real assistant reply whose user turn shares the most words with the
    latest user message (a stand-in assistant that needs no model). Like a model's token budget,
    ``max_words`` cuts a longer reply after that many words (None: replies whole)."""

    name = "retrieval:oasst"

    def __init__(self, conversations, *, max_words: int | None = 200):
        from ...guardrails import normalise

        self._normalise = normalise
        self.max_words = max_words
        self.pairs = []
        for conv in conversations:
            for user, reply in zip(conv.messages[::2], conv.messages[1::2]):
                self.pairs.append((set(normalise(user.content).split()), reply.content))

    async def reply(self, messages, *, seed=None, conversation=None):
        words = set(self._normalise(messages[-1]["content"]).split())
        best = max(self.pairs, key=lambda p: (len(words & p[0]) / (1 + len(p[0])), -len(p[1])))
        text = best[1]
        if self.max_words is not None:
            words_seen = re.finditer(r"\S+", text)
            last = next(islice(words_seen, self.max_words - 1, None), None)  # the max_words-th word
            if last is not None:
                text = text[: last.end()]
        return ChatReply(text=text)
