"""Local transformers checkpoints (``hf:<path or hub id>``) as user models and assistants.

Concurrent requests to the same model are gathered into one batch: while a batch runs in a
worker thread, the requests of all other conversations queue up and form the next batch.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigurationError, UserError
from ...render import (
    END_OF_CONVERSATION,
    END_OF_TURN,
    chat_prompt_ids,
    chat_prompt_string,
    turn_opening,
    user_prompt_ids,
    user_prompt_string,
)
from ..base import ChatReply, ContextOverflow, SamplingSettings, UserDraft, UserTurnRequest, request_sampling
from ..checkpoints import check_source
from ..handle import ConversationHandle
from ..lockstep import Lockstep
from ..turn import table


@dataclass(frozen=True)
class LoadOptions:
    """How to load a local checkpoint."""

    device: str = "auto"  #: "auto" (GPU when there is one), "cpu", "cuda", "cuda:1", "mps"
    dtype: str = "auto"  #: "auto" (bf16 where it is fast: GPUs, CPUs with AMX or AVX-512 BF16; else fp32), "float32", ...
    trust_remote_code: bool = False
    max_batch_size: int = 64
    reuse_cache: bool = True  #: keep each conversation's keys and values between its turns


def _fast_bf16(device: str) -> bool:
    """Whether bf16 matrix work is fast on ``device``: GPUs that support it, and CPUs with bf16
    matrix instructions (AMX tiles on recent Intel, AVX-512 BF16 on recent AMD and Intel), where
    it runs several times faster than float32."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    if device == "cpu":
        try:
            if torch.cpu._is_amx_tile_supported():
                return True
        except AttributeError:  # an older torch: the CPU flags below tell
            pass
        try:
            flags = open("/proc/cpuinfo").read().replace("\n", " ")
        except OSError:
            return False
        return " amx_bf16 " in flags or " avx512_bf16 " in flags
    return False


def _attention_for(device: str) -> dict:
    """On CPUs, attention through SDPA with grouped key/value heads and a boolean mask, which
    reads each cached key and value once per step instead of repeating them per query head."""
    if device != "cpu":
        return {}
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        if query.shape[2] == 1:
            return _decode_attention(query, key, value, attention_mask, scaling), None
        causal = query.shape[2] > 1 and attention_mask is None
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, is_causal=causal,
            enable_gqa=key.shape[1] != query.shape[1],
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("userlm_grouped_sdpa", grouped_sdpa)
    AttentionMaskInterface.register("userlm_grouped_sdpa", sdpa_mask)
    return {"attn_implementation": "userlm_grouped_sdpa"}


def _decode_attention(query, key, value, mask, scaling):
    """Attention of one new token per row over the cache, as two batched matmuls with the query
    heads of each key/value head side by side. On CPUs this runs several times faster than the
    fused kernel, which is built for long query blocks; the cache (a slice of a larger buffer) is
    first made contiguous, which costs less than multiplying through its strides."""
    import torch

    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else dim**-0.5
    grouped = query.reshape(batch * kv_heads, heads // kv_heads, dim)
    keys = key.contiguous().view(batch * kv_heads, length, dim)
    values = value.contiguous().view(batch * kv_heads, length, dim)
    scores = torch.bmm(grouped, keys.transpose(1, 2)).float().view(batch, kv_heads, -1, length) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask[:, :, -1:, -length:], float("-inf"))
        else:
            scores = scores + mask[:, :, -1:, -length:].float()
    weights = torch.softmax(scores, dim=-1).to(value.dtype).view(batch * kv_heads, -1, length)
    out = torch.bmm(weights, values)  # batch * kv_heads, group, dim
    return out.view(batch, heads, 1, dim).transpose(1, 2).contiguous()


_loaded: dict[tuple, LoadedModel] = {}
_load_lock = threading.Lock()


class LoadedModel:
    """A tokenizer and model in memory, shared by every provider that names the same checkpoint."""

    def __init__(self, path: str, options: LoadOptions):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.path = path
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if options.dtype == "auto":
            dtype = torch.bfloat16 if _fast_bf16(device) else torch.float32
        else:
            dtype = getattr(torch, options.dtype, None)
            if not isinstance(dtype, torch.dtype):
                raise UserError(f"unknown dtype {options.dtype!r}; use auto, float32, bfloat16 or float16.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=options.trust_remote_code, **_attention_for(device)
            )
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot load hf:{path} ({first}); give a local model directory or a hub id that is downloaded."
            ) from None
        self.model.to(device).eval()
        self.device = device
        #: positions the model was built for; a prompt and its turn must fit in them
        self.context: int | None = getattr(self.model.config, "max_position_embeddings", None)
        self.pad_id = next(
            i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None
        )

    def budget(self, prompt_tokens: int, max_new_tokens: int) -> int | ContextOverflow | None:
        """The new tokens a prompt of ``prompt_tokens`` leaves room for, when fewer than
        ``max_new_tokens`` (None: no limit applies), or the error when it leaves none."""
        if self.context is None or prompt_tokens + max_new_tokens < self.context:
            return None
        room = self.context - prompt_tokens - 1  # the last token written is fed once more while the batch runs on
        if room < 1:
            return ContextOverflow(f"hf:{self.path}: the prompt is {prompt_tokens} tokens, which fills the model's context of "
                                   f"{self.context} tokens; shorter replies (--assistant-max-tokens), fewer turns (--max-turns) "
                                   "or a model with a longer context would fit")
        return room

    def token_id(self, token: str) -> int | None:
        ids = self.tokenizer.convert_tokens_to_ids([token])
        unk = self.tokenizer.unk_token_id
        return ids[0] if ids and ids[0] is not None and ids[0] != unk else None

    def eos_ids(self) -> set[int]:
        ids = set()
        eos = self.model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids


def load(path: str, options: LoadOptions) -> LoadedModel:
    check_source(path)
    key = (path, options.device, options.dtype, options.trust_remote_code)
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = LoadedModel(path, options)
        return _loaded[key]


def _prefix_cache(options: LoadOptions):
    from .engine import PrefixCache

    return PrefixCache(max_entries=8 * options.max_batch_size) if options.reuse_cache else None


def _stats():
    from .engine import EngineStats

    return EngineStats()


class _Batcher:
    """Gathers concurrent requests and runs them as one batch in a worker thread, when the
    lockstep it has joined says so (see :mod:`userlm.models.lockstep`); a batcher that has
    joined no run batches whatever is waiting."""

    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], max_batch_size: int, order: Callable[[Any], Any]):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.order = order  #: a fixed order for the requests of a batch
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._joined: Lockstep | None = None  # the run's lockstep, while a run uses this model
        self._lockstep: Lockstep | None = None  # the one the worker follows

    def join_lockstep(self, lockstep: Lockstep | None) -> None:
        """Follow ``lockstep`` from the next request on (None: batch freely again)."""
        if lockstep is self._joined:
            return
        self._joined = lockstep
        if lockstep is not None:
            lockstep.join(self)
        self._stop()

    def _stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        for _, future in self._pending:
            future.cancel()
        self._worker, self._pending = None, []

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None:  # a new event loop (another asyncio.run) or run
            self._stop()
            self._loop = loop
            self._lockstep = self._joined or Lockstep(strict=False)
            self._lockstep.join(self)
            self._worker = loop.create_task(self._work(self._lockstep))
        future = loop.create_future()
        self._pending.append((item, future))
        await self._lockstep.waiting(self, len(self._pending))  # type: ignore[union-attr]
        return await future

    async def _work(self, lockstep: Lockstep) -> None:
        while True:
            async with lockstep.batch(self):
                self._pending.sort(key=lambda p: self.order(p[0]))
                batch, self._pending = self._pending[: self.max_batch_size], self._pending[self.max_batch_size :]
                await lockstep.waiting(self, len(self._pending))
                try:
                    results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
                except BaseException as exc:  # the batch failed: every caller in it gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc) if isinstance(exc, Exception) else future.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():  # an item the batch could not run comes back as its error
                        future.set_exception(result) if isinstance(result, Exception) else future.set_result(result)


def _whitespace(tokenizer):
    """The tokenizer's whitespace table, as a tensor and as a token-id predicate."""
    from ..vocab import vocab_tables

    whitespace = vocab_tables(tokenizer).whitespace
    return whitespace, table(whitespace.tolist())


def _forget(model) -> None:
    if model.prefix_cache is not None:
        model.prefix_cache.clear()
    give_back_freed_memory()


#: batches between two hand-backs of freed heap pages in a process that runs no end of a run
TRIM_EVERY = 64
_batches = 0


@functools.cache
def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def give_back_freed_memory() -> None:
    """Hand the operating system the heap pages that freed tensors left with the C allocator.
    Every batch allocates its key/value buffers afresh; glibc keeps the freed pages of such
    large, short-lived blocks, so a process that runs one simulation after another (a notebook,
    ``serve``, an RL loop) grew by gigabytes a run without holding anything. A no-op off glibc."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class LocalUserModel:
    """A UserLM-format user model on this machine; guardrails run as logit constraints."""

    def __init__(self, path: str, *, sampling: SamplingSettings, options: LoadOptions = LoadOptions()):
        self.name = f"hf:{path}"
        self.sampling = sampling
        self.samples_per_request = True  #: a request's own sampling is honoured, row by row
        self.loaded = load(path, options)
        tok = self.loaded.tokenizer
        self.end_id = self.loaded.token_id(END_OF_CONVERSATION)
        eot = self.loaded.token_id(END_OF_TURN)
        self.stop_ids = self.loaded.eos_ids() | ({eot} if eot is not None else set())
        opening = turn_opening(tok)
        self.opening, self.opening_text, self.content_offset = opening.ids, opening.text, opening.content_offset
        self._batcher = _Batcher(self._run, options.max_batch_size, order=lambda r: (r.conversation_key or "", r.seed))
        self.prefix_cache = _prefix_cache(options)
        self.view = f"user:{self.name}"  #: what this model keeps in a conversation's handle
        self.whitespace, self.is_space = _whitespace(tok)
        self.reuse = options.reuse_cache
        self.stats = _stats()

    def prompt_ids(self, request: UserTurnRequest) -> list[int]:
        return user_prompt_ids(self.loaded.tokenizer, request.intent, request.messages)

    def forget_conversations(self) -> None:
        """Drop every conversation's cached keys and values (a new run starts)."""
        _forget(self)

    def join_lockstep(self, lockstep: Lockstep | None) -> None:
        """Batch in step with a run's conversations (None: batch freely again)."""
        self._batcher.join_lockstep(lockstep)

    def _prompt(self, request: UserTurnRequest) -> tuple[str, list[int]]:
        """The prompt's text and ids (continuing what the conversation's handle says this model was
        fed and sampled, so its own turns come back as it wrote them)."""

        def canonical() -> list[int]:
            return self.prompt_ids(request) + self.opening

        if not self.reuse or request.conversation is None:
            return "", canonical()
        tok = self.loaded.tokenizer
        text = user_prompt_string(tok, request.intent, request.messages) + self.opening_text
        return text, request.conversation.prompt(self.view, text, tok, canonical, request.messages)

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        return await self._batcher.submit(request)

    def _run(self, requests: list[UserTurnRequest]) -> list[UserDraft | ContextOverflow]:
        from ..vocab import banned_first_ids, vocab_tables
        from .engine import Row

        tok = self.loaded.tokenizer
        tables = vocab_tables(tok)
        items: list[tuple[Row, str, ConversationHandle | None] | ContextOverflow] = []
        for r in requests:
            text, prompt = self._prompt(r)
            sampling = request_sampling(r, self)
            budget = self.loaded.budget(len(prompt), sampling.max_new_tokens)
            items.append(budget if isinstance(budget, ContextOverflow) else (Row(
                prompt=prompt,
                seed=r.seed,
                banned_first=banned_first_ids(tok, r.banned_first_words) if r.banned_first_words else None,
                suppress_end=not r.end_may_be_sampled,
                end_threshold=r.ending_threshold,
                want_end_prob=True,
                content_offset=self.content_offset,
                key=r.conversation_key,
                max_new_tokens=budget if budget is not None else sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
            ), text, r.conversation if self.reuse else None))
        done = _generate_fitting(self, items, stop_ids=self.stop_ids, end_id=self.end_id, whitespace=self.whitespace,
                                 wordless=tables.wordless)
        return [d if isinstance(d, ContextOverflow) else UserDraft(
            text="" if d[1].ended else tok.decode(d[1].tokens, skip_special_tokens=True).strip(),
            ended=d[1].ended,
            end_prob=d[1].end_prob,
            prompt_tokens=len(d[0].prompt),
            completion_tokens=len(d[1].tokens) + int(d[1].finished),
            truncated=not (d[1].finished or d[1].ended),
        ) for d in done]


def _generate_fitting(model: LocalUserModel | LocalChatModel, items: list, **options: Any) -> list:
    """Each item (a row, its prompt text and its conversation's handle, or the error of a prompt
    that does not fit the context) as (row, its result) or that error: the rows that fit run as one
    batch, and each conversation's handle keeps what its row was fed and sampled."""
    from .engine import generate

    rows = [item[0] for item in items if not isinstance(item, ContextOverflow)]
    longest = max((r.max_new_tokens or model.sampling.max_new_tokens for r in rows), default=model.sampling.max_new_tokens)
    results = iter(generate(model.loaded.model, rows, pad_id=model.loaded.pad_id, temperature=model.sampling.temperature,
                            top_p=model.sampling.top_p, max_new_tokens=longest,
                            prefix_cache=model.prefix_cache, stats=model.stats, **options) if rows else [])
    global _batches
    _batches += 1
    if _batches % TRIM_EVERY == 0:  # a process that never ends a run (serve, RL environments) hands pages back too
        give_back_freed_memory()
    out: list = []
    for item in items:
        if isinstance(item, ContextOverflow):
            out.append(item)
            continue
        (row, text, handle), result = item, next(results)
        if handle is not None:
            handle.wrote(model.view, text, row.prompt, result.tokens, model.loaded.tokenizer, model.is_space)
        out.append((row, result))
    return out


class LocalChatModel:
    """A local instruction-tuned model as the assistant, prompted with its own chat template."""

    def __init__(self, path: str, *, sampling: SamplingSettings, options: LoadOptions = LoadOptions()):
        self.name = f"hf:{path}"
        self.sampling = sampling
        self.loaded = load(path, options)
        if not self.loaded.tokenizer.chat_template:
            raise ConfigurationError(f"hf:{path} has no chat template, so it cannot play the assistant.")
        self._batcher = _Batcher(self._run, options.max_batch_size, order=lambda item: item[1])
        self.prefix_cache = _prefix_cache(options)
        self.view = f"assistant:{self.name}"  #: what this model keeps in a conversation's handle
        self.whitespace, self.is_space = _whitespace(self.loaded.tokenizer)
        self.reuse = options.reuse_cache
        self.stats = _stats()

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        return await self._batcher.submit((messages, seed or 0, conversation))

    def forget_conversations(self) -> None:
        """Drop every conversation's cached keys and values (a new run starts)."""
        _forget(self)

    def join_lockstep(self, lockstep: Lockstep | None) -> None:
        """Batch in step with a run's conversations (None: batch freely again)."""
        self._batcher.join_lockstep(lockstep)

    def _run(self, items: list[tuple[list[dict[str, str]], int, ConversationHandle | None]]) -> list[ChatReply | ContextOverflow]:
        from .engine import Row

        tok = self.loaded.tokenizer
        rows: list[tuple[Row, str, ConversationHandle | None] | ContextOverflow] = []
        for messages, seed, conversation in items:
            handle = conversation if self.reuse else None
            canonical = lambda messages=messages: chat_prompt_ids(tok, messages)
            text = chat_prompt_string(tok, messages) if handle is not None else ""
            prompt = handle.prompt(self.view, text, tok, canonical, messages) if handle is not None else canonical()
            budget = self.loaded.budget(len(prompt), self.sampling.max_new_tokens)
            rows.append(budget if isinstance(budget, ContextOverflow) else (
                Row(prompt=prompt, seed=seed, key=conversation.id if conversation is not None else None, max_new_tokens=budget),
                text, handle))
        done = _generate_fitting(self, rows, stop_ids=self.loaded.eos_ids(), end_id=None, whitespace=self.whitespace)
        return [d if isinstance(d, ContextOverflow) else ChatReply(
            text=tok.decode(d[1].tokens, skip_special_tokens=True).strip(), prompt_tokens=len(d[0].prompt),
            completion_tokens=len(d[1].tokens) + int(d[1].finished),
        ) for d in done]
