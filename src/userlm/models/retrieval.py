"""A stand-in assistant that needs no model: it answers with the real assistant reply whose
user turn shares the most words with the latest user message (``userlm demo`` uses it)."""

from __future__ import annotations

from .base import ChatReply


class RetrievalAssistant:
    """Answers with the real assistant reply whose user turn shares the most words with the
    latest user message (a stand-in assistant that needs no model)."""

    name = "retrieval:oasst"

    def __init__(self, conversations):
        from ..guardrails import normalise

        self._normalise = normalise
        self.pairs = []
        for conv in conversations:
            for user, reply in zip(conv.messages[::2], conv.messages[1::2]):
                self.pairs.append((set(normalise(user.content).split()), reply.content))

    async def reply(self, messages, *, seed=None):

        words = set(self._normalise(messages[-1]["content"]).split())
        best = max(self.pairs, key=lambda p: (len(words & p[0]) / (1 + len(p[0])), -len(p[1])))
        return ChatReply(text=best[1])
