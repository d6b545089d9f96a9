"""Perplexity of real user turns under a user model: the training targets exactly (each user
turn and the end of the conversation, given the intent and the history), batched by a token
budget so long conversations stay within memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..conversation import Conversation
from ..training.samples import IGNORE, PackStats, pack_all


@dataclass
class Perplexity:
    perplexity: float
    nll: float  #: mean negative log-likelihood per target token
    tokens: int  #: target tokens scored
    conversations: int
    dropped_targets: int  #: targets past max_length, not scored


def target_perplexity(
    model, tokenizer, conversations: Sequence[Conversation], *, use_intent: bool = True,
    max_length: int = 2048, max_batch_tokens: int = 16384,
) -> Perplexity:
    import torch

    rows, stats = pack_all(tokenizer, conversations, use_intent=use_intent, max_length=max_length)
    rows.sort(key=lambda r: len(r["input_ids"]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    start = 0
    with torch.inference_mode():
        while start < len(rows):
            end = start + 1
            while end < len(rows) and len(rows[end]["input_ids"]) * (end - start + 1) <= max_batch_tokens:
                end += 1
            batch = rows[start:end]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for i, r in enumerate(batch):
                n = len(r["input_ids"])
                ids[i, :n] = torch.tensor(r["input_ids"])
                labels[i, :n] = torch.tensor(r["labels"])
                attention[i, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += int((shift_labels != IGNORE).sum())
            start = end
    model.train(was_training)
    mean = total_nll / max(total_tokens, 1)
    return Perplexity(math.exp(mean), mean, total_tokens, stats.packed, stats.dropped_targets)


__all__ = ["PackStats", "Perplexity", "target_perplexity"]
