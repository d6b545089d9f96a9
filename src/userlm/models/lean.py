"""A lean forward pass for Llama-recipe decoders (Llama, Mistral, Qwen2) in batched sampling.

A model's own forward builds masks and cache objects and passes through a dozen modules per
layer at every call; for one new token in each of 64 rows that bookkeeping costs more than the
arithmetic, and its cache has to be copied to be read fast. This forward runs the same
computation on the model's own weights, with:

- the query/key/value projections as one matrix multiply, and gate/up as another (the modules'
  weights become views of the fused matrices: no memory is added, and the model's own forward
  still works);
- keys and values written in place into buffers allocated once per batch, every row's tokens
  from column 0, so a row's position is its column and nothing is padded in front of it; a
  finished batch's buffers go back to the model (:class:`BufferPool`) for its next batches;
- decoding attention as two batched matrix multiplies over the whole contiguous buffer with a
  length mask (a contiguous buffer is several times faster to multiply through than a slice).

:func:`lean_model` says whether a model qualifies; the engine uses the model's own forward
otherwise. Tests hold its logits to the model's own.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}  # position encodings that do not depend on the sequence's length
_lean_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_fusing = threading.Lock()


@dataclass
class _Layer:
    norm1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    norm2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class BufferPool:
    """Key/value buffers of finished batches that nothing views any more, kept for the model's
    next batches, in this simulation or a later one in the same process. Memory touched for the
    first time costs a page fault per 4 KiB: on a two-core machine, 0.2-0.4 s for the buffers of
    64 conversations of a 25M-parameter model, where reused ones take a few milliseconds to
    zero. The pool keeps at most ``keep`` sets (the most recently given back); batches in two
    threads (a user model and an assistant on one checkpoint) may share it."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._free: list[list[torch.Tensor]] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> list[torch.Tensor] | None:
        """The most recently given set whose every buffer holds ``size`` elements, or None."""
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                if all(flat.numel() >= size for flat in self._free[i]):
                    return self._free.pop(i)
        return None

    def give(self, storage: list[torch.Tensor]) -> None:
        with self._lock:
            self._free.append(storage)
            del self._free[: -self.keep]

    def __len__(self) -> int:
        return len(self._free)


class LeanModel:
    """The fused weights and shapes of one model."""

    def __init__(self, model):
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.intermediate = config.intermediate_size
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm.weight
        self.head = model.lm_head
        self.layers = [self._fuse(layer) for layer in inner.layers]
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        self.buffers = BufferPool()

    @staticmethod
    def _fuse(layer) -> _Layer:
        attention, mlp = layer.self_attn, layer.mlp
        qkv = _fuse_linears([attention.q_proj, attention.k_proj, attention.v_proj])
        bias = None
        if attention.q_proj.bias is not None:
            bias = torch.cat([attention.q_proj.bias.data, attention.k_proj.bias.data, attention.v_proj.bias.data])
        return _Layer(
            norm1=layer.input_layernorm.weight.data,
            qkv=qkv,
            qkv_bias=bias,
            out=attention.o_proj.weight.data,
            norm2=layer.post_attention_layernorm.weight.data,
            gate_up=_fuse_linears([mlp.gate_proj, mlp.up_proj]),
            down=mlp.down_proj.weight.data,
        )

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # one fused kernel, accumulating in float32; the recipe's own code rounds to the model's
        # dtype before the weight multiplies, so bf16 results can differ in the last bit
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def rotary_table(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of positions 0..length-1, [length, head_dim]."""
        positions = torch.arange(length, device=self.device)[None]
        probe = torch.empty((), dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions)
        return cos[0], sin[0]

    def attention_inputs(self, layer: _Layer, h: torch.Tensor, rotary, keys, values, rows, positions) -> torch.Tensor:
        """The layer's queries [tokens, heads, dim] for hidden states ``h`` [tokens, hidden], rotated
        and scaled for attention; their keys and values, rotated, are written into ``keys`` and
        ``values`` at (``rows``, ``positions``). ``rotary``: cos and sin at the tokens' positions,
        then the same scaled for queries."""
        cos, sin, scaled_cos, scaled_sin = rotary
        qkv = F.linear(self.norm(h, layer.norm1), layer.qkv, layer.qkv_bias)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q = qkv[..., :q_size].unflatten(-1, (self.heads, self.head_dim))
        k = qkv[..., q_size : q_size + kv_size].unflatten(-1, (self.kv_heads, self.head_dim))
        keys[rows, :, positions] = _rotate(k, cos, sin)
        values[rows, :, positions] = qkv[..., q_size + kv_size :].unflatten(-1, (self.kv_heads, self.head_dim))
        return _rotate(q, scaled_cos, scaled_sin)

    def rotary_at(self, cos_table: torch.Tensor, sin_table: torch.Tensor, positions: torch.Tensor):
        """cos and sin at ``positions`` (broadcast over heads), plain and scaled for queries."""
        cos, sin = cos_table[positions][:, None], sin_table[positions][:, None]
        return cos, sin, cos * self.scale, sin * self.scale

    def mlp(self, layer: _Layer, h: torch.Tensor) -> torch.Tensor:
        gate_up = F.linear(self.norm(h, layer.norm2), layer.gate_up)
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return h + F.linear(F.silu(gate) * up, layer.down)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h, self.final_norm)).float()


def _fuse_linears(linears) -> torch.Tensor:
    """One matrix of the stacked weights; each module's weight becomes a view of it."""
    fused = torch.cat([linear.weight.data for linear in linears], dim=0)
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight = torch.nn.Parameter(fused[start : start + rows], requires_grad=False)
        start += rows
    return fused


def lean_model(model) -> LeanModel | None:
    """The lean forward of ``model``, or None when its architecture is not the plain Llama recipe."""
    with _fusing:  # a user model and an assistant may share one checkpoint, batching in two threads
        if model not in _lean_models:
            _lean_models[model] = LeanModel(model) if _qualifies(model) else None
        return _lean_models[model]


def _qualifies(model) -> bool:
    if type(model).__name__ not in _ARCHITECTURES:
        return False
    config = model.config
    if getattr(config, "hidden_act", None) != "silu":
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False  # a window limits attention: the model's own forward knows it
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or getattr(rotary, "rope_type", "default") not in _STATIC_ROPE:
        return False
    layer = inner.layers[0]
    attention = layer.self_attn
    if any(hasattr(attention, name) for name in ("q_norm", "k_norm")) or attention.o_proj.bias is not None:
        return False
    return all(getattr(layer.mlp, name).bias is None for name in ("gate_proj", "up_proj", "down_proj"))


_QUERY_BLOCK = 512  #: padded query positions of a group attended at once
_SCORES = 1 << 23  #: at most this many attention scores at once (bounds their memory for long prompts)


class _Group:
    """Rows of a prompt chunk whose new tokens attend together: their queries are padded to the
    longest, so each key/value head of all of them is one batched matrix multiply (on CPUs much
    faster than one multiply per row, and than the fused attention kernel with a mask). The
    plan is shared by every layer."""

    def __init__(self, first: int, sizes: list[int], pasts: list[int], tokens: range, heads: int, dtype, device):
        self.first, self.count, self.tokens = first, len(sizes), tokens
        self.width = max(sizes)  # padded queries per row
        self.length = max(p + n for p, n in zip(pasts, sizes))  # columns any of them reads
        # where each packed token sits among the padded queries [rows * width]
        self.index = torch.cat([torch.arange(n, device=device) + b * self.width for b, n in enumerate(sizes)])
        at = torch.tensor(pasts, device=device)[:, None] + torch.arange(self.width, device=device)  # [rows, width]
        self.at, self.dtype = at, dtype
        per_block = max(1, min(_QUERY_BLOCK, _SCORES // (self.count * heads * self.length)))
        self.blocks = [(a, min(self.width, a + per_block)) for a in range(0, self.width, per_block)]
        # the masks are made once for every layer, unless that would hold more than a block's scores
        small = self.count * self.width * self.length <= _SCORES
        self.masks = [self._mask(a, b) for a, b in self.blocks] if small else None

    def _mask(self, a: int, b: int) -> torch.Tensor:
        """Added to the scores of padded queries ``a .. b``: -inf past each query's position (many
        times faster than filling through a broadcast mask). Padded queries (discarded) see at
        least column 0, so no row of scores is all masked."""
        columns = torch.arange(self.length, device=self.at.device)
        hidden = torch.zeros((self.count, 1, 1, b - a, self.length), dtype=self.dtype, device=self.at.device)
        return hidden.masked_fill_((columns > self.at[:, a:b, None])[:, None, None], float("-inf"))

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, out: torch.Tensor) -> None:
        """Causal attention of the group's packed queries ``q`` [tokens, heads, dim] (scaled) over
        ``keys``/``values`` [rows, kv_heads, capacity, dim]; written into ``out`` [tokens, heads, dim]."""
        rows, width, length = self.count, self.width, self.length
        _, heads, dim = q.shape
        kv_heads = keys.shape[1]
        group = heads // kv_heads
        padded = q.new_zeros((rows * width, heads, dim))
        padded[self.index] = q
        padded = padded.view(rows, width, kv_heads, group, dim).permute(0, 2, 3, 1, 4)  # [rows, kv, group, width, dim]
        # the columns in use, contiguous (a slice of the buffers is slow to multiply through)
        k = keys[:, :, :length].transpose(-1, -2).reshape(rows * kv_heads, dim, length)
        v = values[:, :, :length].reshape(rows * kv_heads, length, dim)
        attended = q.new_empty((rows, kv_heads, group, width, dim))
        for i, (a, b) in enumerate(self.blocks):
            block = padded[:, :, :, a:b].reshape(rows * kv_heads, group * (b - a), dim)
            scores = torch.bmm(block, k).view(rows, kv_heads, group, b - a, length)
            scores.add_(self.masks[i] if self.masks is not None else self._mask(a, b))
            weights = torch.softmax(scores, dim=-1).view(rows * kv_heads, group * (b - a), length)
            attended[:, :, :, a:b] = torch.bmm(weights, v).view(rows, kv_heads, group, b - a, dim)
        out[:] = attended.permute(0, 3, 1, 2, 4).reshape(rows * width, heads, dim)[self.index]


def _groups(sizes: list[int], pasts: list[int], heads: int, dtype, device) -> list[_Group]:
    """Consecutive rows of similar new lengths (padding them to the longest adds at most 30%)."""
    groups, first, token = [], 0, 0
    while first < len(sizes):
        last, widest = first + 1, sizes[first]
        while last < len(sizes) and max(widest, sizes[last]) * (last + 1 - first) <= 1.3 * sum(sizes[first : last + 1]):
            widest = max(widest, sizes[last])
            last += 1
        count = sum(sizes[first:last])
        groups.append(_Group(first, sizes[first:last], pasts[first:last], range(token, token + count), heads, dtype, device))
        first, token = last, token + count
    return groups


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LeanBatch:
    """The keys, values and lengths of a batch of rows, and its forward passes.

    Buffers are [rows, kv_heads, capacity, head_dim] per layer; row ``b`` holds its tokens in
    columns ``0 .. lengths[b] - 1``. Columns past a row's length hold zeros or stale values and are
    masked out."""

    def __init__(self, lean: LeanModel, rows: int, capacity: int):
        """Buffers come from the model's :class:`BufferPool` when it holds large enough ones."""
        self.lean, self.rows, self.capacity = lean, rows, capacity
        shape = (rows, lean.kv_heads, capacity, lean.head_dim)
        size = rows * lean.kv_heads * capacity * lean.head_dim
        layers = 2 * len(lean.layers)
        storage = lean.buffers.take(size)
        if storage is None:
            # room for conversations to grow to three times their length before a later batch needs
            # new buffers; pages past what is zeroed are never touched, so they cost no memory until then
            storage = [torch.empty(3 * size, dtype=lean.dtype, device=lean.device) for _ in range(layers)]
        self.storage = storage
        views = []
        for flat in storage:  # columns past a row's length are masked, but zeros keep stale values (inf, nan) out of the sums
            views.append(flat[:size].view(shape).zero_())
        self.keys, self.values = views[0::2], views[1::2]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=lean.device)
        self.cos, self.sin = lean.rotary_table(capacity)
        self.columns = torch.arange(capacity, device=lean.device)

    def load(self, row: int, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
        """Put the first ``length`` cached positions of a row (per layer [kv_heads, n, head_dim]) in place."""
        for (k, v), keys, values in zip(layers, self.keys, self.values):
            keys[row, :, :length] = k[:, :length]
            values[row, :, :length] = v[:, :length]
        self.lengths[row] = length

    def kept(self, row: int) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The row's cached positions, per layer [kv_heads, length, head_dim]: views, not copies
        (the batch writes nothing more once it is done), so they keep the batch's buffers alive
        as long as any row's are held."""
        n = int(self.lengths[row])
        return n, [(k[row, :, :n], v[row, :, :n]) for k, v in zip(self.keys, self.values)]

    def release(self) -> None:
        """Give the buffers back to the model's pool for a later batch; only once nothing views
        them any more (no :meth:`kept` views are held), as this batch is then done."""
        if self.storage is not None:
            self.lean.buffers.give(self.storage)
            self.storage = self.keys = self.values = None

    @torch.inference_mode()
    def prefill(self, start: int, tokens: list[list[int]]) -> torch.Tensor:
        """Compute new tokens for rows ``start ..`` after what each already holds; the last
        logits of each row, [len(tokens), vocab].

        The rows' tokens are packed into one sequence for the projections (no padding); for
        attention, rows of similar new lengths are padded to the longest and attend together."""
        lean, device = self.lean, self.lean.device
        sizes = [len(t) for t in tokens]
        rows = torch.arange(start, start + len(tokens)).repeat_interleave(torch.tensor(sizes)).to(device)
        ids = torch.tensor([i for t in tokens for i in t], device=device)
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        starts = self.lengths[start : start + len(tokens)].tolist()
        positions = self.lengths[rows] + (torch.arange(len(ids), device=device) - torch.tensor(offsets[:-1], device=device)[rows - start])
        rotary = lean.rotary_at(self.cos, self.sin, positions)
        groups = _groups(sizes, starts, lean.heads, lean.dtype, device)
        h = lean.embed(ids)
        for layer, keys, values in zip(lean.layers, self.keys, self.values):
            q = lean.attention_inputs(layer, h, rotary, keys, values, rows, positions)
            attended = torch.empty_like(q)
            for g in groups:
                them = slice(start + g.first, start + g.first + g.count)
                g.attend(q[g.tokens.start : g.tokens.stop], keys[them], values[them], attended[g.tokens.start : g.tokens.stop])
            h = h + F.linear(attended.flatten(1), layer.out)
            h = lean.mlp(layer, h)
        self.lengths[start : start + len(tokens)] += torch.tensor(sizes, device=device)
        last = torch.tensor(offsets[1:], device=device) - 1
        return lean.logits(h[last])

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """One new token per row (inactive rows' tokens are computed but not kept); logits [rows, vocab]."""
        lean = self.lean
        rows, kv_heads, group, dim = self.rows, lean.kv_heads, lean.heads // lean.kv_heads, lean.head_dim
        positions = self.lengths
        # columns past each row's position: -inf added to their scores (the scores come out of the
        # multiply in the model's dtype; softmax accumulates in float32 whatever its input)
        hidden = torch.zeros((rows, 1, 1, self.capacity), dtype=lean.dtype, device=lean.device)
        hidden.masked_fill_((self.columns[None, :] > positions[:, None]).view(rows, 1, 1, self.capacity), float("-inf"))
        rotary = lean.rotary_at(self.cos, self.sin, positions)
        everyone = torch.arange(rows, device=lean.device)
        h = lean.embed(tokens)
        for layer, keys, values in zip(lean.layers, self.keys, self.values):
            q = lean.attention_inputs(layer, h, rotary, keys, values, everyone, positions)
            scores = torch.bmm(q.reshape(rows * kv_heads, group, dim), keys.view(rows * kv_heads, self.capacity, dim).transpose(1, 2))
            scores.view(rows, kv_heads, group, self.capacity).add_(hidden)
            weights = torch.softmax(scores, dim=-1)
            attended = torch.bmm(weights, values.view(rows * kv_heads, self.capacity, dim))
            h = h + F.linear(attended.view(rows, -1), layer.out)
            h = lean.mlp(layer, h)
        self.lengths += active.to(self.lengths.device)
        return lean.logits(h)
