"""Batched sampling for local causal LMs, with the user-turn guardrails as logit constraints.

Every row carries its own random generator, seeded per conversation, turn and attempt, so a
row's random draws do not depend on which other conversations share its batch. (Its logits can
still differ in the last bits with the batch's shape; the lockstep batching of
:mod:`userlm.models.lockstep` makes batches fall the same way on every run, so a seed reproduces
transcripts exactly.)

Each prompt is computed from where its conversation's keys and values kept from the previous
turn leave off (:class:`PrefixCache`); then all rows decode together in one batch, writing into
key/value buffers allocated once. Llama-recipe models (Llama, Mistral, Qwen2) run through the
lean forward of :mod:`userlm.models.lean`: prompts packed without padding for the projections,
attending in groups of rows of similar new length; any other model runs through its own forward,
prompts in groups of similar length.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch




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
    key: str | None = None  #: the conversation this row continues, for the prefix cache


@dataclass
class RowResult:
    tokens: list[int] = field(default_factory=list)
    ended: bool = False  #: the row ended the conversation (end token, or threshold reached)
    end_prob: float | None = None
    finished: bool = False  #: a stop token was produced (else the token budget ran out)


@dataclass
class EngineStats:
    """What the engine did, for benchmarks and logs."""

    batches: int = 0
    rows: int = 0
    prefill_tokens: int = 0  #: prompt tokens computed
    reused_tokens: int = 0  #: prompt tokens whose keys and values came from the prefix cache
    decode_tokens: int = 0  #: tokens generated (one forward position each)
    seconds: float = 0.0
    prefill_seconds: float = 0.0


@dataclass
class _Entry:
    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  #: per layer, keys and values [kv_heads, len, head_dim]
    batch: object | None = None  #: the batch whose buffers ``layers`` are views of (None: they are copies)


class PrefixCache:
    """Keys and values of each conversation's last sequence, so its next turn only computes what
    is new. Reuse covers the longest common prefix of the stored ids and the new prompt, so a
    stale or mismatched entry costs speed, never correctness. Least recently used entries go
    first once ``max_entries`` are held."""

    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._viewed: object | None = None  #: the batch whose buffers entries may view

    def lookup(self, key: str, prompt: list[int]) -> tuple[_Entry | None, int]:
        entry = self._entries.get(key)
        if entry is None:
            return None, 0
        self._entries.move_to_end(key)
        n = 0
        for a, b in zip(entry.ids, prompt):
            if a != b:
                break
            n += 1
        return entry, min(n, len(prompt) - 1)  # at least one prompt token is computed, for its logits

    def store(self, key: str, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]], batch: object | None = None) -> None:
        """Keep ``layers`` for ``key``; with ``batch``, they are views of that batch's buffers."""
        self._entries[key] = _Entry(ids, layers, batch)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def settle(self, batch: object) -> None:
        """Copy out the entries that still view an earlier batch's buffers, so that nothing views
        them any more, and give those buffers back to their model's pool for a later batch. In
        lockstep runs every conversation of a batch stores anew from the next one and nothing is
        copied; what remains are conversations that ended or sit elsewhere."""
        for entry in self._entries.values():
            if entry.batch is not None and entry.batch is not batch:
                entry.layers = [(k.clone(), v.clone()) for k, v in entry.layers]
                entry.batch = None
        if self._viewed is not batch:
            _release(self._viewed)
            self._viewed = batch

    def clear(self) -> None:
        """Forget every entry. The buffers they viewed go back to their model at the next
        :meth:`settle`, not now: a batch in flight may still be copying from them."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _release(batch: object | None) -> None:
    """Give a finished lean batch's buffers back to its model (the model's own forward keeps none)."""
    if batch is not None:
        batch.release()


def _reserved_cache(capacity: int, past: list[tuple[torch.Tensor, torch.Tensor]] | None):
    """A cache whose layers write into buffers allocated once for the whole generation, instead
    of concatenating (copying the whole cache) at every step."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class ReservedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                shape = (*key_states.shape[:2], capacity, key_states.shape[-1])
                self._keys = key_states.new_empty(shape)
                self._values = value_states.new_empty((*value_states.shape[:2], capacity, value_states.shape[-1]))
                self._length = 0
            n = key_states.shape[-2]
            end = self._length + n
            self._keys[:, :, self._length : end] = key_states
            self._values[:, :, self._length : end] = value_states
            self._length = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

    cache = DynamicCache()
    cache.layers, cache.layer_class_to_replicate = [], ReservedLayer
    for index, (k, v) in enumerate(past or []):
        cache.update(k, v, index)
    return cache


def _past(rows: list[Row], cache: PrefixCache | None) -> list[tuple[_Entry | None, int]]:
    if cache is None:
        return [(None, 0)] * len(rows)
    return [cache.lookup(r.key, r.prompt) if r.key is not None else (None, 0) for r in rows]


@torch.inference_mode()
def generate(
    model,
    rows: list[Row],
    *,
    stop_ids: set[int],
    end_id: int | None,
    pad_id: int,
    whitespace: torch.Tensor,
    wordless: torch.Tensor | None = None,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    prefix_cache: PrefixCache | None = None,
    stats: EngineStats | None = None,
    lean: bool = True,
) -> list[RowResult]:
    """Continue every row until a stop token or ``max_new_tokens``, in one batch.

    With a ``prefix_cache``, rows with a ``key`` start from the keys and values stored for that
    key (the common prefix with their prompt) and leave theirs behind for the next turn. With
    ``lean`` (the default), Llama-recipe models run through :mod:`userlm.models.lean`.
    """
    started_at = time.perf_counter()
    pasts = _past(rows, prefix_cache)
    groups = length_groups([len(r.prompt) - n for r, (_, n) in zip(rows, pasts)])
    order = [i for group in groups for i in group]  # each group's rows side by side
    spans, start = [], 0
    for group in groups:
        spans.append(range(start, start + len(group)))
        start += len(group)
    sorted_results = _generate(
        model, [rows[i] for i in order], [pasts[i] for i in order], spans, stop_ids=stop_ids,
        end_id=end_id, pad_id=pad_id, whitespace=whitespace, wordless=wordless, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, prefix_cache=prefix_cache, stats=stats, lean=lean, started_at=started_at,
    )
    results: list[RowResult | None] = [None] * len(rows)
    for position, i in enumerate(order):
        results[i] = sorted_results[position]
    return results


def _generate(model, rows, pasts, groups, *, stop_ids, end_id, pad_id, whitespace, wordless, temperature, top_p,
              max_new_tokens, prefix_cache, stats, lean, started_at) -> list[RowResult]:
    from .lean import lean_model

    batch = len(rows)
    fast = lean_model(model) if lean else None
    if fast is not None:
        state = _LeanRows(fast, rows, max_new_tokens)
    else:
        state = _ModelRows(model, rows, pad_id, max_new_tokens)
    logits = state.prefill(pasts, groups)
    prefill_seconds = time.perf_counter() - started_at

    generators = [torch.Generator().manual_seed(r.seed) for r in rows]
    results = [RowResult() for _ in rows]
    # per-row state as Python lists: read for every row at every step, where tensor indexing costs more
    done, started = [False] * batch, [False] * batch
    worded = [False] * batch  # a letter or digit was written: the first word has begun
    is_space = whitespace.tolist()
    is_wordless = wordless.tolist() if wordless is not None else None
    suppress = torch.tensor([r.suppress_end for r in rows], device=logits.device)
    banned = _banned_mask(rows, logits.shape[-1], logits.device)
    wants_end_prob = [end_id is not None and (r.want_end_prob or r.end_threshold is not None) for r in rows]

    for step in range(max_new_tokens):
        awaiting = [wants_end_prob[b] and not done[b] and not started[b] and results[b].end_prob is None for b in range(batch)]
        end_probs = torch.softmax(logits, dim=-1)[:, end_id].tolist() if any(awaiting) else None
        for b, row in enumerate(rows):
            if awaiting[b] and step >= row.content_offset:
                results[b].end_prob = end_probs[b]
                if row.end_threshold is not None and results[b].end_prob >= row.end_threshold:
                    results[b].ended, results[b].finished = True, True
                    done[b] = True
        if end_id is not None and suppress.any():
            logits[suppress, end_id] = float("-inf")
        if banned is not None and not all(worded):
            logits.masked_fill_(banned & ~torch.tensor(worded, device=logits.device)[:, None], float("-inf"))
        next_tokens = _sample(logits, generators, temperature, top_p).tolist()
        for b in range(batch):
            if done[b]:
                continue
            token = next_tokens[b]
            row = rows[b]
            if awaiting[b] and results[b].end_prob is None and (token == end_id or not is_space[token]):
                # the turn ends or its content starts before the expected newline: this was its start
                results[b].end_prob = end_probs[b]
                if row.end_threshold is not None and results[b].end_prob >= row.end_threshold:
                    results[b].ended, results[b].finished = True, True
                    done[b] = True
                    continue
            if token in stop_ids or token == end_id:
                results[b].finished = True
                # an end token after some text just closes the turn; as the whole turn it ends the conversation
                results[b].ended = token == end_id and not started[b]
                done[b] = True
                continue
            results[b].tokens.append(token)
            if not is_space[token]:
                started[b] = True
            if is_wordless is None or not is_wordless[token]:
                worded[b] = True
        if all(done) or step == max_new_tokens - 1:
            break
        fed = torch.tensor([pad_id if d else t for t, d in zip(next_tokens, done)])
        logits = state.step(fed, ~torch.tensor(done))

    if prefix_cache is not None:
        for b, row in enumerate(rows):
            if row.key is not None:
                kept = state.kept(b)
                if kept is not None:
                    length, layers = kept
                    prefix_cache.store(row.key, row.prompt + results[b].tokens[: length - len(row.prompt)], layers, state.views)
        prefix_cache.settle(state.views)
    else:
        _release(state.views)  # nothing views its buffers: the model's next batch takes them
    if stats is not None:
        stats.batches += 1
        stats.rows += batch
        stats.prefill_tokens += sum(len(r.prompt) - n for r, (_, n) in zip(rows, pasts))
        stats.prefill_seconds += prefill_seconds
        stats.reused_tokens += sum(n for _, n in pasts)
        stats.decode_tokens += sum(len(r.tokens) + int(r.finished) for r in results)  # stop tokens count too
        stats.seconds += time.perf_counter() - started_at
    return results


def length_groups(lengths: list[int], waste: float = 1.3, budget: int = 16384) -> list[list[int]]:
    """Indices of ``lengths`` in groups of similar length, so that padding every member of a
    group to its longest costs at most ``waste`` times the real tokens, and a group computes at
    most ``budget`` tokens (one very long prompt is a group of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    total = 0
    for i in order:
        n = lengths[i]
        widest = n * (len(groups[-1]) + 1) if groups else 0
        if groups and widest <= waste * (total + n) and widest <= budget:
            groups[-1].append(i)
            total += n
        else:
            groups.append([i])
            total = n
    return groups


class _LeanRows:
    """Rows computed by the lean Llama forward (:mod:`userlm.models.lean`)."""

    #: prompt tokens computed at once: activations of a few MB stay in cache and in memory the
    #: allocator keeps (larger ones are mapped afresh, a page fault per 4 KiB), 10-20% faster than 16384
    PREFILL_TOKENS = 2048

    def __init__(self, lean, rows: list[Row], max_new_tokens: int):
        from .lean import LeanBatch

        self.rows = rows
        self.batch = LeanBatch(lean, len(rows), max(len(r.prompt) for r in rows) + max_new_tokens)
        self.views = self.batch  #: what the kept keys and values are views of

    def prefill(self, pasts, groups: list[range]) -> torch.Tensor:
        # prompts are packed without padding, so rows go together up to a token budget whatever their lengths
        for b, (entry, n) in enumerate(pasts):
            if entry is not None and n:
                self.batch.load(b, entry.layers, n)
        fresh = [row.prompt[n:] for row, (_, n) in zip(self.rows, pasts)]
        logits, start, tokens = [], 0, 0
        for b, part in enumerate(fresh):
            if tokens and tokens + len(part) > self.PREFILL_TOKENS:
                logits.append(self.batch.prefill(start, fresh[start:b]))
                start, tokens = b, 0
            tokens += len(part)
        logits.append(self.batch.prefill(start, fresh[start:]))
        return torch.cat(logits)

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        device = self.batch.lean.device
        return self.batch.step(tokens.to(device), active.to(device))

    def kept(self, b: int):
        return self.batch.kept(b)


class _ModelRows:
    """Rows computed by the model's own forward: prompts left-padded to a common width, and a
    cache that writes into buffers allocated once."""

    def __init__(self, model, rows: list[Row], pad_id: int, max_new_tokens: int):
        self.model, self.rows, self.pad_id, self.max_new_tokens = model, rows, pad_id, max_new_tokens
        self.device = next(model.parameters()).device
        self.views = None  # kept keys and values are copies

    def prefill(self, pasts, groups: list[range]) -> torch.Tensor:
        rows, device = self.rows, self.device
        logits, per_row = _prefill(self.model, rows, pasts, groups, self.pad_id, device)
        lengths = [len(r.prompt) for r in rows]
        width = max(lengths)
        self.attention = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for b, n in enumerate(lengths):
            self.attention[b, width - n :] = 1
        self.cache = _reserved_cache(width + self.max_new_tokens, _left_padded(per_row, lengths, width, device))
        self.positions = torch.tensor(lengths, device=device)[:, None] - 1
        layers = getattr(self.cache, "layers", None)
        # a cache of another shape (sliding windows, ...) is not reused
        self.reusable = bool(layers) and all(getattr(layer, "keys", None) is not None and layer.keys.dim() == 4 for layer in layers)
        return logits

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        device = self.device
        self.attention = torch.cat([self.attention, active.long().to(device)[:, None]], dim=1)
        self.positions = self.positions + 1
        return self.model(
            input_ids=tokens.to(device)[:, None],
            attention_mask=self.attention,
            position_ids=self.positions,
            past_key_values=self.cache,
            use_cache=True,
        ).logits[:, -1, :].float()

    def kept(self, b: int):
        if not self.reusable:
            return None
        where = self.attention[b].nonzero().squeeze(-1)
        return len(where), [(layer.keys[b, :, where].clone(), layer.values[b, :, where].clone()) for layer in self.cache.layers]


def _prefill(model, rows: list[Row], pasts, groups: list[range], pad_id: int, device):
    """Compute every prompt, group by group, starting from what the prefix cache holds. Returns
    the last logits of every row and each row's keys and values (per layer, [kv_heads, prompt
    length, head_dim])."""
    logits = [None] * len(rows)
    per_row: list[list[tuple[torch.Tensor, torch.Tensor]] | None] = [None] * len(rows)
    for group in groups:
        members = [rows[i] for i in group]
        group_pasts = [pasts[i] for i in group]
        reused = [n for _, n in group_pasts]
        fresh = [row.prompt[n:] for row, n in zip(members, reused)]
        p_max, n_max = max(reused), max(len(f) for f in fresh)
        input_ids = torch.full((len(group), n_max), pad_id, dtype=torch.long)
        attention = torch.zeros((len(group), p_max + n_max), dtype=torch.long)
        positions = torch.zeros((len(group), n_max), dtype=torch.long)
        for b, (tokens, n) in enumerate(zip(fresh, reused)):
            input_ids[b, n_max - len(tokens) :] = torch.tensor(tokens)
            attention[b, p_max - n : p_max] = 1
            attention[b, p_max + n_max - len(tokens) :] = 1
            positions[b, n_max - len(tokens) :] = torch.arange(n, n + len(tokens))
        past = _left_padded([e.layers if e is not None and n else None for e, n in group_pasts], reused, p_max, device) if p_max else None
        cache = _reserved_cache(p_max + n_max, past)
        out = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
                    past_key_values=cache, use_cache=True, **_last_logits_only(model)).logits[:, -1, :].float()
        for b, i in enumerate(group):
            where = attention[b].nonzero().squeeze(-1).to(device)
            per_row[i] = [(layer.keys[b, :, where], layer.values[b, :, where]) for layer in cache.layers]
            logits[i] = out[b]
    return torch.stack(logits), per_row


def _last_logits_only(model) -> dict:
    """Ask for the logits of the last position only, where the model supports it (saves the
    output projection of every other prompt token)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _left_padded(per_row, lengths: list[int], width: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-row keys and values (the first ``lengths[b]`` positions of each) as one batch, left-padded to ``width``."""
    template = next(layers for layers, n in zip(per_row, lengths) if layers is not None and n)
    out = []
    for index, (k0, v0) in enumerate(template):
        keys = torch.zeros((len(per_row), k0.shape[0], width, k0.shape[2]), dtype=k0.dtype, device=device)
        values = torch.zeros((len(per_row), v0.shape[0], width, v0.shape[2]), dtype=v0.dtype, device=device)
        for b, (layers, n) in enumerate(zip(per_row, lengths)):
            if layers is not None and n:
                k, v = layers[index]
                keys[b, :, width - n :] = k[:, :n]
                values[b, :, width - n :] = v[:, :n]
        out.append((keys, values))
    return out


def _banned_mask(rows: list[Row], vocab: int, device) -> torch.Tensor | None:
    if not any(r.banned_first is not None and len(r.banned_first) for r in rows):
        return None
    mask = torch.zeros((len(rows), vocab), dtype=torch.bool)
    for b, r in enumerate(rows):
        if r.banned_first is not None and len(r.banned_first):
            mask[b, r.banned_first[r.banned_first < vocab]] = True
    return mask.to(device)


def _sample(logits: torch.Tensor, generators: list[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:  # the nucleus needs the tokens in order of probability
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        probs = sorted_probs.masked_fill(cumulative - sorted_probs > top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    draws = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device, cdf.dtype)
    index = torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1)).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, index).squeeze(-1) if top_p < 1.0 else index.squeeze(-1)
