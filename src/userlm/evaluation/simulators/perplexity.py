"""How likely a local causal LM finds real users: perplexity of held-out user turns and the
probability that the user ends the conversation at each point.

Targets are exactly the training targets: each user turn and ``<|endconversation|>`` after the
last assistant reply, given the intent (or not) and everything before. Two ways to read a model:

* **UserLM format** (``hf:`` user models): the conversation rendered by
  :func:`userlm.render.training_ids`, the renderer training and simulation use. P(end) after an
  assistant reply is the probability of ``<|endconversation|>`` right after the newline that
  opens every user turn, read off the same forward pass.
* **Flipped** (``prompted:hf:`` instruction-tuned chat models): the chat a prompted user sees
  (:func:`userlm.render.prompted_user_view`: role-play system prompt with the intent,
  roles swapped), rendered with the model's own chat template; the targets are its
  ``assistant`` messages, i.e. the real user's turns and a last message ``<|endconversation|>``
  (what the prompt asks for when the goal is met). P(end) after an assistant reply is the
  probability of that whole message, scored as its own short sequence.

Sequences are batched up to a token budget; a sequence longer than ``chunk_tokens`` runs alone
in chunks over a growing key/value cache, and the vocabulary projection is applied only at the
positions that are scored, so memory stays bounded on long conversations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...conversation import Conversation
from ...render import END_OF_CONVERSATION, chat_target_ids, target_spans, training_ids, turn_opening_ids

FORMATS = ("userlm", "flipped")


@dataclass
class Scored:
    """What one sequence contributed."""

    nll: float = 0.0  #: summed negative log-likelihood of its target tokens
    tokens: int = 0
    probes: list[float] = field(default_factory=list)  #: P(end) at each probe position


@dataclass
class _Sequence:
    ids: list[int]
    mask: list[bool]  #: which ids are targets
    probes: list[int] = field(default_factory=list)  #: positions whose next-token P(end id) is read
    owner: int = 0  #: conversation index
    role: str = "turns"  #: "turns" (perplexity) or "end" (a flipped end probe)
    position: int = 0  #: for end probes: which assistant reply it follows


@dataclass
class EndPoint:
    """One point after an assistant reply in a real conversation."""

    conversation: str
    after_reply: int  #: 1 = after the first assistant reply
    prob: float  #: the model's P(end) there
    ended: bool  #: the real user ended here


@dataclass
class HeldOutScores:
    """Perplexity of the real user turns, per conversation, and P(end) at every point."""

    nll: list[float]  #: per conversation, summed over its target tokens
    tokens: list[int]
    conversation_ids: list[str]
    end_points: list[EndPoint]
    dropped_targets: int = 0  #: targets past the model's context length


@dataclass
class Perplexity:
    perplexity: float
    nll: float  #: mean negative log-likelihood per target token
    tokens: int  #: target tokens scored
    conversations: int
    dropped_targets: int  #: targets past max_length, not scored


def end_points(conv: Conversation) -> list[tuple[int, int, bool]]:
    """(message index of the user turn or len(messages) for the end, reply number, ended)."""
    out, replies = [], 0
    for i, m in enumerate(conv.messages):
        if m.role == "assistant":
            replies += 1
        elif i > 0 and conv.messages[i - 1].role == "assistant":
            out.append((i, replies, False))
    if conv.messages and conv.messages[-1].role == "assistant":
        out.append((len(conv.messages), replies, True))
    return out


def userlm_sequences(tokenizer, conv: Conversation, owner: int, *, use_intent: bool, newline: list[int] | None) -> list[_Sequence]:
    """The conversation's packed targets, with a P(end) probe after every assistant reply when
    ``newline`` (the ids that open a user turn) is given."""
    ids, mask = training_ids(tokenizer, conv.intent if use_intent else None, conv.messages)
    seqs = [_Sequence(ids, mask, owner=owner)]
    if newline is None:
        return seqs
    spans = target_spans(mask)
    user_index = [i for i, m in enumerate(conv.messages) if m.role == "user"] + [len(conv.messages)]
    span_of = dict(zip(user_index, spans))
    for message_index, _, _ in end_points(conv):
        start = span_of[message_index][0]
        if ids[start : start + len(newline)] == newline:
            seqs[0].probes.append(start + len(newline) - 1)
        else:  # the turn's text merged with its newline: probe on a sequence of its own
            seqs.append(_Sequence(ids[:start] + newline, [False] * (start + len(newline)), [start + len(newline) - 1], owner, "probe"))
    return seqs


def flipped_sequences(tokenizer, conv: Conversation, owner: int, *, use_intent: bool) -> list[_Sequence]:
    from ...render import prompted_user_view

    intent = conv.intent if use_intent else None
    chat = [m.chat() for m in conv.messages] + [{"role": "user", "content": END_OF_CONVERSATION}]
    seqs = [_Sequence(ids, mask, owner=owner) for ids, mask in chat_target_ids(tokenizer, prompted_user_view(intent, chat, allow_end=True))]
    for message_index, reply, _ in end_points(conv):
        so_far = [m.chat() for m in conv.messages[:message_index]] + [{"role": "user", "content": END_OF_CONVERSATION}]
        ((ids, mask),) = chat_target_ids(tokenizer, prompted_user_view(intent, so_far, allow_end=True), last_only=True)
        seqs.append(_Sequence(ids, mask, owner=owner, role="end", position=reply))
    return seqs


def score_sequences(model, seqs: Sequence[_Sequence], *, end_id: int | None = None, max_batch_tokens: int = 16384,
                    chunk_tokens: int = 4096, progress=None) -> list[Scored]:
    """Summed target NLL and probe probabilities of every sequence."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))
    results: list[Scored] = [Scored() for _ in seqs]
    was_training = model.training
    model.eval()
    start = 0
    with torch.inference_mode():
        while start < len(order):
            first = seqs[order[start]]
            if len(first.ids) > chunk_tokens:
                results[order[start]] = _score_chunked(model, first, end_id, chunk_tokens, device)
                start += 1
            else:
                end = start + 1
                while (end < len(order) and len(seqs[order[end]].ids) <= chunk_tokens
                       and len(seqs[order[end]].ids) * (end - start + 1) <= max_batch_tokens):
                    end += 1
                batch = [seqs[i] for i in order[start:end]]
                for i, scored in zip(order[start:end], _score_batch(model, batch, end_id, device)):
                    results[i] = scored
                start = end
            if progress is not None:
                progress(start)
    model.train(was_training)
    return results


def _heads(model):
    """The transformer body and the vocabulary projection, so logits are computed only where needed."""
    try:
        body = model.get_decoder()
    except (AttributeError, ValueError, NotImplementedError):
        body = None
    head = model.get_output_embeddings()
    # models that post-process their logits (soft-capping, scaling) are read whole
    post = any(getattr(model.config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if body is None or body is model or head is None or post:
        return None, None
    return body, head


def _wanted(seq: _Sequence, offset: int, width: int) -> tuple[list[int], list[int], list[int]]:
    """Positions in [offset, offset+width) whose logits are read: targets (predicting t+1) and probes."""
    positions, targets, probe_slots = [], [], []
    n = len(seq.ids)
    for t in range(offset, min(offset + width, n - 1)):
        if seq.mask[t + 1]:
            positions.append(t)
            targets.append(seq.ids[t + 1])
    for p in seq.probes:
        if offset <= p < offset + width:
            probe_slots.append(len(positions))
            positions.append(p)
            targets.append(-1)
    return positions, targets, probe_slots


def _read(logits, targets: list[int], probe_slots: list[int], end_id: int | None, scored: Scored) -> None:
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    is_target = [k for k, t in enumerate(targets) if t >= 0]
    if is_target:
        idx = torch.tensor(is_target, device=logp.device)
        tok = torch.tensor([targets[k] for k in is_target], device=logp.device)
        scored.nll += float(-logp[idx, tok].sum())
        scored.tokens += len(is_target)
    for k in probe_slots:
        scored.probes.append(float(logp[k, end_id].exp()) if end_id is not None else float("nan"))


def _project(head, hidden, slices: int = 1024):
    import torch

    return torch.cat([head(hidden[i : i + slices]) for i in range(0, hidden.shape[0], slices)]) if hidden.shape[0] else head(hidden)


def _score_batch(model, batch: list[_Sequence], end_id, device) -> list[Scored]:
    import torch

    body, head = _heads(model)
    width = max(len(s.ids) for s in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, s in enumerate(batch):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        attention[i, : len(s.ids)] = 1
    ids, attention = ids.to(device), attention.to(device)
    if body is not None:
        hidden = body(input_ids=ids, attention_mask=attention).last_hidden_state
    else:
        full = model(input_ids=ids, attention_mask=attention).logits
    out = []
    for i, s in enumerate(batch):
        positions, targets, probe_slots = _wanted(s, 0, width)
        scored = Scored()
        if positions:
            index = torch.tensor(positions, device=device)
            logits = _project(head, hidden[i, index]) if body is not None else full[i, index]
            _read(logits, targets, probe_slots, end_id, scored)
        out.append(scored)
    return out


def _score_chunked(model, seq: _Sequence, end_id, chunk_tokens: int, device) -> Scored:
    import torch
    from transformers import DynamicCache

    from ...models.hf.engine import cache_keyword

    body, head = _heads(model)
    cache = DynamicCache()
    scored = Scored()
    for offset in range(0, len(seq.ids), chunk_tokens):
        chunk = torch.tensor([seq.ids[offset : offset + chunk_tokens]], device=device)
        positions, targets, probe_slots = _wanted(seq, offset, chunk.shape[1])
        if body is not None:
            hidden = body(input_ids=chunk, **{cache_keyword(body): cache}, use_cache=True).last_hidden_state[0]
            logits = _project(head, hidden[[p - offset for p in positions]]) if positions else None
        else:
            full = model(input_ids=chunk, **{cache_keyword(model): cache}, use_cache=True).logits[0]
            logits = full[[p - offset for p in positions]] if positions else None
        if logits is not None:
            _read(logits, targets, probe_slots, end_id, scored)
    return scored


def held_out_scores(model, tokenizer, conversations: Sequence[Conversation], *, fmt: str = "userlm", use_intent: bool = True,
                    max_batch_tokens: int = 16384, chunk_tokens: int = 4096, progress=None) -> HeldOutScores:
    """Perplexity of the real user turns and P(end) at every point after an assistant reply."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    end_id = newline = None
    if fmt == "userlm":
        ids = tokenizer.convert_tokens_to_ids([END_OF_CONVERSATION])
        end_id = ids[0] if ids and ids[0] is not None and ids[0] != tokenizer.unk_token_id else None
        newline = turn_opening_ids(tokenizer) if end_id is not None else None
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 10**9
    seqs: list[_Sequence] = []
    dropped = 0
    for owner, conv in enumerate(conversations):
        made = (userlm_sequences(tokenizer, conv, owner, use_intent=use_intent, newline=newline) if fmt == "userlm"
                else flipped_sequences(tokenizer, conv, owner, use_intent=use_intent))
        for s in made:
            if len(s.ids) > limit:  # keep whole targets that fit the model's context, count the rest
                spans = target_spans(s.mask)
                kept = [sp for sp in spans if sp[1] <= limit]
                dropped += len(spans) - len(kept)
                if not kept or s.role != "turns":
                    continue
                s.ids, s.mask = s.ids[: kept[-1][1]], s.mask[: kept[-1][1]]
                s.probes = [p for p in s.probes if p < len(s.ids)]
            seqs.append(s)
    scored = score_sequences(model, seqs, end_id=end_id, max_batch_tokens=max_batch_tokens, chunk_tokens=chunk_tokens, progress=progress)
    nll, tokens = [0.0] * len(conversations), [0] * len(conversations)
    probes: dict[int, list[float]] = {i: [] for i in range(len(conversations))}
    flipped_end: dict[tuple[int, int], float] = {}
    for s, r in zip(seqs, scored):
        if s.role == "end":
            flipped_end[(s.owner, s.position)] = math.exp(-r.nll)
            continue
        if s.role == "turns":
            nll[s.owner] += r.nll
            tokens[s.owner] += r.tokens
        probes[s.owner].extend(r.probes)
    points = []
    for owner, conv in enumerate(conversations):
        where = end_points(conv)
        if fmt == "userlm":
            probs = _in_order(seqs, scored, owner)
        else:
            probs = [flipped_end.get((owner, reply)) for _, reply, _ in where]
        for (_, reply, ended), p in zip(where, probs):
            if p is not None:
                points.append(EndPoint(conv.id, reply, p, ended))
    return HeldOutScores(nll, tokens, [c.id for c in conversations], points, dropped)


def _in_order(seqs: list[_Sequence], scored: list[Scored], owner: int) -> list[float | None]:
    """P(end) of one conversation's probes ordered by position (probes may sit on extra sequences)."""
    found = [(p, r.probes[k]) for s, r in zip(seqs, scored) if s.owner == owner and s.role != "end"
             for k, p in enumerate(sorted(s.probes)) if k < len(r.probes)]
    return [prob for _, prob in sorted(found)]


def target_perplexity(model, tokenizer, conversations: Sequence[Conversation], *, use_intent: bool = True,
                      max_length: int = 2048, max_batch_tokens: int = 16384) -> Perplexity:
    """Perplexity of the training targets of ``conversations`` (the figure training reports)."""
    scores = held_out_scores(model, tokenizer, conversations, use_intent=use_intent, max_batch_tokens=max_batch_tokens,
                             chunk_tokens=max_length)
    total = sum(scores.tokens)
    mean = sum(scores.nll) / max(total, 1)
    return Perplexity(math.exp(mean), mean, total, sum(1 for t in scores.tokens if t), scores.dropped_targets)


__all__ = ["EndPoint", "HeldOutScores", "Perplexity", "held_out_scores", "score_sequences", "target_perplexity"]
