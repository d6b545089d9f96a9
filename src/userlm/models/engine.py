"""Batched sampling for local causal LMs, with the user-turn guardrails as logit constraints.

Every row carries its own random generator, seeded per conversation, turn and attempt, so a
row's tokens do not depend on which other conversations share its batch: the same seed gives
the same transcript however the batches fall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from ..guardrails import first_word


@dataclass
class Row:
    """One sequence to continue."""

    prompt: list[int]
    seed: int
    banned_first: torch.Tensor | None = None  #: token ids refused as the first content token
    suppress_end: bool = False  #: never sample the end-of-conversation token
    end_threshold: float | None = None  #: stop as "ended" once P(end) at content start reaches this
    want_end_prob: bool = False  #: record P(end) at the start of the content
    content_offset: int = 0  #: generated whitespace tokens expected before content (UserLM: the newline)


@dataclass
class RowResult:
    tokens: list[int] = field(default_factory=list)
    ended: bool = False  #: the row ended the conversation (end token, or threshold reached)
    end_prob: float | None = None
    finished: bool = False  #: a stop token was produced (else the token budget ran out)


@dataclass(frozen=True)
class VocabTables:
    """Per-tokenizer lookups, computed once."""

    whitespace: torch.Tensor  #: bool[vocab]: the token decodes to whitespace only
    texts: tuple[str, ...]  #: each token's text, for the first-word filter


def vocab_tables(tokenizer) -> VocabTables:
    return _vocab_tables(tokenizer)


@lru_cache(maxsize=8)
def _vocab_tables(tokenizer) -> VocabTables:
    size = len(tokenizer)
    texts = tuple(tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False))
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    ws = torch.tensor([(t.strip() == "" and t != "" and i not in special) for i, t in enumerate(texts)])
    return VocabTables(whitespace=ws, texts=texts)


def banned_first_ids(tokenizer, words: tuple[str, ...]) -> torch.Tensor:
    """Token ids whose text, as the first content token, begins with a banned word.

    A token like "I", " I'm" or "Here" is banned; "If" and "Hello" are not. A banned word spelt
    over several tokens ("He" + "re") slips through here and is refused by the draft check.
    """
    return _banned_first_ids(tokenizer, tuple(sorted(w.casefold() for w in words)))


@lru_cache(maxsize=32)
def _banned_first_ids(tokenizer, words: tuple[str, ...]) -> torch.Tensor:
    texts = vocab_tables(tokenizer).texts
    banned = set(words)
    ids = [i for i, text in enumerate(texts) if first_word(text).casefold() in banned]
    return torch.tensor(ids, dtype=torch.long)


@torch.inference_mode()
def generate(
    model,
    rows: list[Row],
    *,
    stop_ids: set[int],
    end_id: int | None,
    pad_id: int,
    whitespace: torch.Tensor,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
) -> list[RowResult]:
    """Continue every row until a stop token or ``max_new_tokens``, in one batch."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    batch = len(rows)
    width = max(len(r.prompt) for r in rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row.prompt) :] = torch.tensor(row.prompt)
        attention[b, width - len(row.prompt) :] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    logits = model(
        input_ids=input_ids, attention_mask=attention, position_ids=positions, past_key_values=cache, use_cache=True
    ).logits[:, -1, :].float()

    generators = [torch.Generator().manual_seed(r.seed) for r in rows]
    results = [RowResult() for _ in rows]
    done = torch.zeros(batch, dtype=torch.bool)
    started = torch.zeros(batch, dtype=torch.bool)
    whitespace = whitespace.to(logits.device)
    suppress = torch.tensor([r.suppress_end for r in rows], device=logits.device)
    last_position = positions[:, -1:]

    for step in range(max_new_tokens):
        if end_id is not None:
            end_probs = torch.softmax(logits, dim=-1)[:, end_id].cpu()
            for b, row in enumerate(rows):
                if done[b] or started[b] or results[b].end_prob is not None or step < row.content_offset:
                    continue
                if row.want_end_prob or row.end_threshold is not None:
                    results[b].end_prob = float(end_probs[b])
                if row.end_threshold is not None and results[b].end_prob >= row.end_threshold:
                    results[b].ended, results[b].finished = True, True
                    done[b] = True
            if suppress.any():
                logits[suppress, end_id] = float("-inf")
        for b, row in enumerate(rows):
            if row.banned_first is not None and not started[b] and len(row.banned_first):
                logits[b, row.banned_first] = float("-inf")
        next_tokens = _sample(logits, generators, temperature, top_p).cpu()
        for b in range(batch):
            if done[b]:
                continue
            token = int(next_tokens[b])
            row = rows[b]
            if end_id is not None and results[b].end_prob is None and (row.want_end_prob or row.end_threshold):
                if token == end_id or not whitespace[token]:
                    # the turn ends or its content starts before the expected newline: this was its start
                    results[b].end_prob = float(end_probs[b])
                    if row.end_threshold is not None and results[b].end_prob >= row.end_threshold:
                        results[b].ended, results[b].finished = True, True
                        done[b] = True
                        continue
            if token in stop_ids or token == end_id:
                results[b].finished = True
                # an end token after some text just closes the turn; as the whole turn it ends the conversation
                results[b].ended = token == end_id and not bool(started[b])
                done[b] = True
                continue
            results[b].tokens.append(token)
            if not whitespace[token]:
                started[b] = True
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        next_tokens = next_tokens.to(device)
        next_tokens[done.to(device)] = pad_id
        attention = torch.cat([attention, (~done).long().to(device)[:, None]], dim=1)
        last_position = last_position + 1
        logits = model(
            input_ids=next_tokens[:, None],
            attention_mask=attention,
            position_ids=last_position,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1, :].float()
    return results


def _sample(logits: torch.Tensor, generators: list[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    if top_p < 1.0:
        cumulative = sorted_probs.cumsum(dim=-1)
        sorted_probs = sorted_probs.masked_fill(cumulative - sorted_probs > top_p, 0.0)
    cdf = sorted_probs.cumsum(dim=-1)
    draws = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device, cdf.dtype)
    index = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1)).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, index).squeeze(-1)
