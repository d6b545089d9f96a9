"""Batched sampling for local causal LMs, with the user-turn guardrails as logit constraints.

Decoding is transformers' own batched ``generate``; the guardrails and the sampling run in one
logits processor (:class:`_Guard`). Every row carries its own random generator, seeded per
conversation, turn and attempt, so a row's random draws do not depend on which other
conversations share its batch. (Its logits can still differ in the last bits with the batch's
shape; the lockstep batching of :mod:`userlm.models.lockstep` makes batches fall the same way on
every run, so a seed reproduces transcripts exactly.)

Each prompt but its last token is computed first, through the model's own forward in groups of
similar length, from where its conversation's keys and values kept from the previous turn leave
off (:class:`PrefixCache`); ``generate`` then starts from that cache, and its decoding writes
into key/value buffers allocated once.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..turn import TurnReader, TurnRules, table


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
    max_new_tokens: int | None = None  #: this row's token budget when below the batch's (its prompt nearly fills the context)
    temperature: float | None = None  #: this row's temperature (None: the batch's)
    top_p: float | None = None  #: this row's nucleus (None: the batch's)


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


class PrefixCache:
    """Keys and values of each conversation's last sequence, so its next turn only computes what
    is new. Reuse covers the longest common prefix of the stored ids and the new prompt, so a
    stale or mismatched entry costs speed, never correctness. Least recently used entries go
    first once ``max_entries`` are held."""

    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def lookup(self, key: str, prompt: list[int]) -> tuple[_Entry | None, int]:
        """The entry for ``key`` and how many of ``prompt``'s first tokens it holds (never the
        last one: the engine computes at least that, for its logits)."""
        entry = self._entries.get(key)
        if entry is None:
            return None, 0
        self._entries.move_to_end(key)
        n = 0
        for a, b in zip(entry.ids, prompt):
            if a != b:
                break
            n += 1
        return entry, min(n, len(prompt) - 1)

    def store(self, key: str, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._entries[key] = _Entry(ids, layers)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


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
) -> list[RowResult]:
    """Continue every row until a stop token or ``max_new_tokens``, in one batch.

    With a ``prefix_cache``, rows with a ``key`` start from the keys and values stored for that
    key (the common prefix with their prompt) and leave theirs behind for the next turn.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    started_at = time.perf_counter()
    device = next(model.parameters()).device
    pasts = _past(rows, prefix_cache)
    heads = [len(r.prompt) - 1 for r in rows]  # every prompt token but the last is computed here
    per_row = _prefill(model, rows, pasts, heads, pad_id, device)
    prefill_seconds = time.perf_counter() - started_at

    width = max(heads)
    cache = _reserved_cache(width + 1 + max_new_tokens, _left_padded(per_row, heads, width, device) if width else None)
    input_ids = torch.full((len(rows), width + 1), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width + 1), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width + 1 - len(row.prompt) :] = torch.tensor(row.prompt)
        attention[b, width + 1 - len(row.prompt) :] = 1
    guard = _Guard(rows, width + 1, end_id=end_id, stop_ids=stop_ids, pad_id=pad_id, whitespace=whitespace,
                   wordless=wordless, temperature=temperature, top_p=top_p)
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                              eos_token_id=sorted(stop_ids | ({end_id} if end_id is not None else set())))
    # generate() fills what a config leaves unset from the model's own generation config (sampling,
    # penalties, forced or suppressed tokens), whose processors would run before the guard: it
    # sees none of it, so the guard alone decides every token
    _quiet_length_reminder()
    with _generation_lock(model):
        own, model.generation_config = model.generation_config, GenerationConfig()
        try:
            model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                           **{cache_keyword(model): cache}, generation_config=config,
                           logits_processor=LogitsProcessorList([guard]))
        finally:
            model.generation_config = own
    results = guard.results

    if prefix_cache is not None:
        fed = guard.steps - 1  # the last sampled token is never fed back
        for b, row in enumerate(rows):
            if row.key is not None and cache.layers:
                kept = min(len(results[b].tokens), fed)
                where = torch.cat([attention[b].nonzero().squeeze(-1), torch.arange(width + 1, width + 1 + kept)]).to(device)
                layers = [(layer.keys[b, :, where].clone(), layer.values[b, :, where].clone()) for layer in cache.layers]
                prefix_cache.store(row.key, row.prompt + results[b].tokens[:kept], layers)
    if stats is not None:
        stats.batches += 1
        stats.rows += len(rows)
        stats.prefill_tokens += sum(len(r.prompt) - n for r, (_, n) in zip(rows, pasts))
        stats.prefill_seconds += prefill_seconds
        stats.reused_tokens += sum(n for _, n in pasts)
        stats.decode_tokens += sum(len(r.tokens) + int(r.finished) for r in results)  # stop tokens count too
        stats.seconds += time.perf_counter() - started_at
    return results


class _Guard:
    """The guardrails and the sampling, as the one logits processor of ``generate``.

    Each row's turn is a :class:`~userlm.models.turn.TurnReader`, which holds the rules of when
    a turn ends. At each step the guard reads P(end) from the raw logits for the rows whose
    content may start here, makes the end token impossible where the rules forbid it, refuses
    banned first words until a worded token is written, samples every row with its own
    generator (temperature, nucleus), hands each row's token to its reader, and returns scores
    where only the token the reader kept is possible, so that ``generate``'s greedy step takes
    exactly it. A row whose P(end) reached its threshold is given the end token, which
    ``generate`` counts as a stop."""

    def __init__(self, rows: list[Row], prompt_width: int, *, end_id, stop_ids, pad_id, whitespace, wordless,
                 temperature, top_p):
        self.rows, self.prompt_width = rows, prompt_width
        self.end_id, self.pad_id = end_id, pad_id
        self.temperature = torch.tensor([temperature if r.temperature is None else r.temperature for r in rows])
        self.top_p = torch.tensor([top_p if r.top_p is None else r.top_p for r in rows])
        is_space = table(whitespace.tolist())
        is_wordless = table(wordless.tolist(), beyond=True) if wordless is not None else None
        stops = frozenset(stop_ids)
        self.turns = [TurnReader(TurnRules(end=end_id, stops=stops, suppress_end=r.suppress_end, end_threshold=r.end_threshold,
                                           want_end_prob=r.want_end_prob, content_offset=r.content_offset,
                                           budget=r.max_new_tokens), is_space, is_wordless) for r in rows]
        self.steps = 0
        self.generators = [torch.Generator().manual_seed(r.seed) for r in rows]
        self.told = [False] * len(rows)  # generate was given a stop token for a row its budget cut
        self.first_stop = min(stop_ids) if stop_ids else pad_id
        self.banned = None

    @property
    def results(self) -> list[RowResult]:
        return [RowResult(tokens=t.tokens, ended=t.ended, end_prob=t.end_prob, finished=t.finished) for t in self.turns]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step, self.steps = self.steps, self.steps + 1
        logits = scores.float()
        turns, end_id = self.turns, self.end_id
        if step == 0:
            self.banned = _banned_mask(self.rows, logits.shape[-1], logits.device)
        awaiting = [t.awaiting_start for t in turns]
        end_probs: list[float] = torch.softmax(logits, dim=-1)[:, end_id].tolist() if any(awaiting) else []
        no_end = [t.forbids_end() for t in turns]
        if any(no_end):
            logits[torch.tensor(no_end, device=logits.device), end_id] = float("-inf")
        if self.banned is not None:
            no_banned = [t.forbids_banned() for t in turns]
            if any(no_banned):
                logits.masked_fill_(self.banned & torch.tensor(no_banned, device=logits.device)[:, None], float("-inf"))
        sampled = _sample(logits, self.generators, self.temperature, self.top_p).tolist()
        for b, turn in enumerate(turns):
            if not turn.done:
                sampled[b] = turn.read(sampled[b], end_probs[b] if awaiting[b] else None)
            elif turn.cut and not self.told[b]:  # generate has not seen this row stop: a stop token tells it
                self.told[b] = True
                sampled[b] = self.first_stop
            else:
                sampled[b] = self.pad_id
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(turns), device=scores.device), torch.tensor(sampled, device=scores.device)] = 0.0
        return out


def _quiet_length_reminder() -> None:
    """Rows are padded on the left to the longest prompt, so the batch grows wider than any row
    and transformers warns that "the model's predefined maximum length" is exceeded when the
    widest row plus the budget pass it; each row's own budget already keeps every token it keeps
    inside the context (:meth:`userlm.models.hf.local.LoadedModel.budget`), so that reminder says
    nothing about the turns written."""
    import logging

    target = logging.getLogger("transformers.generation.stopping_criteria")
    if not any(isinstance(f, _NoLengthReminder) for f in target.filters):
        target.addFilter(_NoLengthReminder())


class _NoLengthReminder:
    def filter(self, record) -> bool:
        return "friendly reminder" not in record.getMessage()


def _prefill(model, rows: list[Row], pasts, heads: list[int], pad_id: int, device) -> list:
    """The keys and values of each row's first ``heads[b]`` prompt tokens (per layer, [kv_heads,
    heads[b], head_dim]; None where that is none), computed through the model's own forward in
    groups of similar new length, from what the prefix cache holds."""
    per_row: list = [None] * len(rows)
    fresh_lengths = [h - n for h, (_, n) in zip(heads, pasts)]
    for b, ((entry, n), h) in enumerate(zip(pasts, heads)):
        if fresh_lengths[b] == 0 and h:
            per_row[b] = [(k[:, :n], v[:, :n]) for k, v in entry.layers]
    todo = [b for b in range(len(rows)) if fresh_lengths[b] > 0]
    for group in length_groups([fresh_lengths[b] for b in todo]):
        group = [todo[i] for i in group]
        reused = [pasts[b][1] for b in group]
        fresh = [rows[b].prompt[n : heads[b]] for b, n in zip(group, reused)]
        p_max, n_max = max(reused), max(len(f) for f in fresh)
        input_ids = torch.full((len(group), n_max), pad_id, dtype=torch.long)
        attention = torch.zeros((len(group), p_max + n_max), dtype=torch.long)
        positions = torch.zeros((len(group), n_max), dtype=torch.long)
        for i, (tokens, n) in enumerate(zip(fresh, reused)):
            input_ids[i, n_max - len(tokens) :] = torch.tensor(tokens)
            attention[i, p_max - n : p_max] = 1
            attention[i, p_max + n_max - len(tokens) :] = 1
            positions[i, n_max - len(tokens) :] = torch.arange(n, n + len(tokens))
        past = _left_padded([pasts[b][0].layers if n else None for b, n in zip(group, reused)], reused, p_max, device) if p_max else None
        cache = _reserved_cache(p_max + n_max, past)
        model(input_ids=input_ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device),
              use_cache=True, **{cache_keyword(model): cache}, **_last_logits_only(model))
        for i, b in enumerate(group):
            where = attention[i].nonzero().squeeze(-1).to(device)
            per_row[b] = [(layer.keys[i, :, where], layer.values[i, :, where]) for layer in cache.layers]
    return per_row


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


_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_lock = threading.Lock()


def _generation_lock(model) -> threading.Lock:
    """One lock per model: its generation config is set aside for each ``generate`` call, and a
    user model and an assistant that share weights may call from two threads."""
    with _locks_lock:
        return _locks.setdefault(model, threading.Lock())


def cache_keyword(model) -> str:
    """The name under which the model's forward and ``generate`` take a key/value cache:
    ``cache`` from transformers 5.20, ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


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


def _sample(logits: torch.Tensor, generators: list[torch.Generator], temperature: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """One token per row, each row with its own temperature (0: greedy), nucleus and generator; a
    row's token depends on its logits, settings and generator alone, never on the batch's other rows."""
    greedy = temperature <= 0
    if bool(greedy.all()):
        return logits.argmax(dim=-1)
    device = logits.device
    probs = torch.softmax(logits / temperature.clamp(min=1e-6).to(device, logits.dtype)[:, None], dim=-1)
    draws = torch.stack([torch.rand((), generator=g) for g in generators]).to(device, probs.dtype)

    def drawn(p: torch.Tensor) -> torch.Tensor:
        cdf = p.cumsum(dim=-1)
        return torch.searchsorted(cdf, (draws * cdf[:, -1]).unsqueeze(-1)).clamp(max=cdf.shape[-1] - 1).squeeze(-1)

    nucleus = (top_p < 1.0).to(device)
    if bool(nucleus.any()):  # the nucleus needs the tokens in order of probability
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        kept = sorted_probs.masked_fill(cumulative - sorted_probs > top_p.to(device, probs.dtype)[:, None], 0.0)
        chosen = order.gather(-1, drawn(kept).unsqueeze(-1)).squeeze(-1)
        if not bool(nucleus.all()):
            chosen = torch.where(nucleus, chosen, drawn(probs))
    else:
        chosen = drawn(probs)
    return torch.where(greedy.to(device), logits.argmax(dim=-1), chosen) if bool(greedy.any()) else chosen
