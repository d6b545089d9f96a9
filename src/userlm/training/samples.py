"""Flipped training samples: one packed sequence per conversation.

A conversation with K user turns has K+1 targets: each user turn given the intent and everything
before it, and ``<|endconversation|>`` after the last assistant reply. A causal LM sees every
prefix anyway, so all K+1 targets share one sequence; the ids and the loss mask come together
from :func:`userlm.render.training_ids`, the renderer simulation uses.

A conversation longer than ``max_length`` keeps the targets that fit whole, with their full
context; the targets past the cut are dropped and counted, never trained on with a cut context.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..conversation import Conversation
from ..render import target_spans, training_ids

IGNORE = -100


@dataclass
class PackStats:
    conversations: int = 0
    packed: int = 0
    targets: int = 0
    dropped_targets: int = 0  #: targets past max_length
    dropped_conversations: int = 0  #: not even the first target fitted


def pack(tokenizer, conv: Conversation, *, use_intent: bool = True, max_length: int = 2048, stats: PackStats | None = None) -> dict | None:
    """``{"input_ids", "labels"}`` for one conversation (labels are -100 off the targets)."""
    stats = stats if stats is not None else PackStats()
    stats.conversations += 1
    ids, mask = training_ids(tokenizer, conv.intent if use_intent else None, conv.messages)
    spans = target_spans(mask)
    kept = [s for s in spans if s[1] <= max_length]
    stats.targets += len(kept)
    stats.dropped_targets += len(spans) - len(kept)
    if not kept:
        stats.dropped_conversations += 1
        return None
    end = kept[-1][1]
    labels = [t if m else IGNORE for t, m in zip(ids[:end], mask[:end])]
    stats.packed += 1
    return {"input_ids": ids[:end], "labels": labels}


def pack_all(tokenizer, conversations: Iterable[Conversation], **kwargs) -> tuple[list[dict], PackStats]:
    stats = PackStats()
    rows = [r for c in conversations if (r := pack(tokenizer, c, stats=stats, **kwargs)) is not None]
    return rows, stats
