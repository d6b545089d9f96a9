"""vLLM's async engine in this process (``vllm:<dir or hub id>``), as user model and as assistant.

Every conversation's turn is a request of its own, submitted the moment the conversation needs
it: vLLM's continuous batching runs whatever is in flight together, so no conversation waits for
the slowest one of a batch, and its automatic prefix caching reuses each conversation's history.
Prompts go in as token ids from :mod:`userlm.render` (a model's own last turn as the ids it was
sampled as, as with ``hf:``), so what the model sees is what the ``hf:`` engine would feed it.

The guardrails are exact inside the engine (:mod:`userlm.models.vllm.guard`): banned first words
at the first worded token only, ``<|endconversation|>`` impossible until allowed, and the end
threshold at the first content position. P(end) is read from the raw log-probabilities (before
any processing) of the end token itself, not from a top-k list. Each request carries its seed,
so a seed reproduces a run.

The engine runs on an event loop of its own, in a thread: a simulation's loop (or several
``asyncio.run`` calls in turn) talk to it through thread-safe futures. One engine serves every
provider that names the same model with the same settings, both roles included.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
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
from ..base import ChatReply, SamplingSettings, UserDraft, UserTurnRequest, request_sampling
from ..handle import ConversationHandle
from ..turn import TurnReader, TurnRules, table

GUARD = "userlm.models.vllm.guard:Guardrails"

#: what ``userlm simulate`` says once when a vllm: engine runs on the CPU without a share of the cores
#: of its own (the figures: B4b in benchmarks/RESULTS.md and benchmarks/NOTES.md)
CPU_NOTICE = ("note: vllm: is running on the CPU on cores it shares; there hf: is the faster engine (B4b in "
              "benchmarks/NOTES.md: 1.4x as fast as two vllm: engines on one core). On CPUs vllm: pays off as a user and an assistant of "
              "different models, which userlm places side by side on cores of their own; on GPUs it always does.")


@dataclass(frozen=True)
class VLLMOptions:
    """vLLM engine settings, passed through to its engine arguments."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9  #: share of each GPU's memory the engine may take
    max_model_len: int | None = None  #: longest sequence (default: the model's)
    dtype: str = "auto"
    quantization: str | None = None  #: e.g. awq, gptq, fp8
    kv_cache_gb: float | None = None  #: KV-cache size in GiB (on CPUs: default 4, or VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int | None = None  #: most sequences in one engine step
    #: on CPUs: the cores this engine's worker binds to ("0-3", "0,2"; VLLM_CPU_OMP_THREADS_BIND's form), so that
    #: two engines in one process (a user and an assistant) run side by side; None: vLLM's own choice
    cpus: str | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    load_format: str = "auto"  #: "dummy": random weights of the checkpoint's shape (capacity planning)

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.kv_cache_gb is not None and self.kv_cache_gb <= 0:
            raise ValueError("kv_cache_gb must be above 0")
        if self.cpus is not None:
            try:
                _cores(self.cpus)
            except ValueError:
                raise ValueError(f"cpus {self.cpus!r} is not a list of cores such as '0-3' or '0,2'") from None


def _cpu_only() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_arguments(path: str, options: VLLMOptions) -> dict:
    """The keyword arguments of vLLM's ``AsyncEngineArgs`` for ``path`` and ``options``."""
    args = dict(
        model=path,
        tokenizer=path,
        dtype=options.dtype,
        tensor_parallel_size=options.tensor_parallel_size,
        gpu_memory_utilization=options.gpu_memory_utilization,
        trust_remote_code=options.trust_remote_code,
        enforce_eager=options.enforce_eager,
        enable_prefix_caching=True,
        logits_processors=[GUARD],
        logprobs_mode="raw_logprobs",
        load_format=options.load_format,
        seed=0,
    )
    if options.max_model_len is not None:
        args["max_model_len"] = options.max_model_len
    if options.quantization is not None:
        args["quantization"] = options.quantization
    if options.max_num_seqs is not None:
        args["max_num_seqs"] = options.max_num_seqs
    kv_gb = options.kv_cache_gb
    if _cpu_only():
        # vLLM's CPU build: per-request seeds crash chunked prefill ("CPU Generator does not use offset")
        args["enable_chunked_prefill"] = False
        if kv_gb is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_gb = 4.0
    if kv_gb is not None:
        args["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
    return args


class Engine:
    """One vLLM ``AsyncLLM`` on an event loop of its own."""

    _ids = itertools.count()

    def __init__(self, path: str, options: VLLMOptions):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's per-step INFO lines would bury the progress bar
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise UserError(f"vllm:{path} needs vLLM ({exc}); install it with pip install 'userlm[vllm]'.") from None
        from transformers import AutoTokenizer

        self.path = path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=options.trust_remote_code)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load vllm:{path} ({first}); give a local model directory or a downloaded hub id.") from None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"vllm:{path}", daemon=True)
        self.thread.start()
        args = AsyncEngineArgs(**engine_arguments(path, options))

        async def start():
            return AsyncLLM.from_engine_args(args)

        self.on_cpu = _cpu_only()
        # the user's own VLLM_CPU_OMP_THREADS_BIND wins
        binding = options.cpus if self.on_cpu and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ else None
        try:
            with _bound_to(binding):  # read by the engine's processes as they start
                self.llm = asyncio.run_coroutine_threadsafe(start(), self.loop).result()
        except Exception as exc:
            self.loop.call_soon_threadsafe(self.loop.stop)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"vLLM could not start vllm:{path} ({first}).") from None
        if binding is not None:
            _bind_engine_core(self.llm, binding)
        self.eos = _eos_ids(path, self.tokenizer)
        atexit.register(self.close)  # after vLLM's own exit handlers, so it runs before them

    async def generate(self, prompt: list[int], params, conversation: str | None = None) -> tuple[list[int], list, str | None]:
        """Sample a continuation of ``prompt``: its token ids, their log-probability dicts and the
        finish reason. The request's id names its conversation (vLLM's logs and traces show it).
        Cancelling the caller aborts the request inside the engine."""
        request_id = f"userlm-{next(self._ids)}" + (f"-{conversation}" if conversation else "")
        future = asyncio.run_coroutine_threadsafe(self._generate(prompt, params, request_id), self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    async def _generate(self, prompt: list[int], params, request_id: str):
        from vllm.inputs import TokensPrompt

        final: Any = None
        async for output in self.llm.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id):
            final = output
        completion = final.outputs[0]
        return list(completion.token_ids), list(completion.logprobs or []), completion.finish_reason

    def reset_prefix_cache(self) -> None:
        """Drop every cached prefix (so that a run starts from nothing another run left)."""
        asyncio.run_coroutine_threadsafe(self.llm.reset_prefix_cache(), self.loop).result()

    def close(self) -> None:
        """Stop the engine and its processes; requests still in flight fail."""
        if not self.thread.is_alive():
            return

        async def stop():
            handler = getattr(self.llm, "output_handler", None)
            if handler is not None:  # first, so that it does not report the engine it waits on as dead
                handler.cancel()
            self.llm.shutdown(timeout=2)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.llm = None  # its own finaliser now, not at interpreter exit when its module is gone


@contextlib.contextmanager
def _bound_to(cpus: str | None) -> Iterator[None]:
    """vLLM's CPU worker binds its threads to ``cpus``."""
    if cpus is None:
        yield
        return
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpus
    try:
        yield
    finally:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)


def _bind_engine_core(llm, cpus: str) -> None:
    """Bind the engine's core process (its scheduler) to the cores its worker has. It spins while its
    worker computes (vLLM's shared-memory queue yields the core in a loop): on its worker's cores that
    spin gives way to the worker, where unbound it takes the other engine's core."""
    cores = _cores(cpus)
    manager = getattr(getattr(getattr(llm, "engine_core", None), "resources", None), "engine_manager", None)
    for process in getattr(manager, "processes", []):
        with contextlib.suppress(OSError):  # a process that is gone, or threads that ended meanwhile
            for thread in os.listdir(f"/proc/{process.pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(thread), cores)


def _cores(cpus: str) -> set[int]:
    """The cores of a binding in VLLM_CPU_OMP_THREADS_BIND's form ("0-3", "0,2", "0-1,4")."""
    cores: set[int] = set()
    for part in cpus.split(","):
        first, _, last = part.strip().partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    if not cores or min(cores) < 0:
        raise ValueError(cpus)
    return cores


def core_shares(count: int) -> list[str | None]:
    """This process's cores split into ``count`` shares, one per engine that will run side by side
    on the CPU (None each where there are fewer cores than engines, or the user set the binding)."""
    cores = sorted(os.sched_getaffinity(0))
    if count < 2 or len(cores) < count or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return [None] * count
    size = len(cores) // count
    shares = [cores[k * size : (k + 1) * size] for k in range(count - 1)] + [cores[(count - 1) * size :]]
    return [",".join(map(str, share)) for share in shares]


#: on CPUs, the share of a simulation's conversations that each of two engines side by side runs at
#: once (vLLM's max_num_seqs). Below a half, so that the conversations split into groups, one at
#: each engine and some queued at each, instead of moving between the engines as one wave that
#: leaves one of them idle (B4b in benchmarks/RESULTS.md; the shares tried: benchmarks/NOTES.md)
SIDE_BY_SIDE_SHARE = 3 / 8


def side_by_side(user: VLLMOptions, assistant: VLLMOptions, conversations: int) -> tuple[VLLMOptions, VLLMOptions]:
    """The settings of a user and an assistant engine that run side by side on this machine's CPU
    for ``conversations`` conversations in flight: each gets its own share of the cores, and runs
    at most :data:`SIDE_BY_SIDE_SHARE` of the conversations at once (unless ``max_num_seqs`` is
    set). Unchanged where the cores cannot be split (one core, or the user bound vLLM's threads)."""
    first, second = core_shares(2)
    if first is None or second is None:
        return user, assistant
    most = max(1, math.ceil(conversations * SIDE_BY_SIDE_SHARE))
    return (replace(user, cpus=first, max_num_seqs=user.max_num_seqs or most),
            replace(assistant, cpus=second, max_num_seqs=assistant.max_num_seqs or most))


def on_cpu() -> bool:
    """Whether a vLLM engine here runs on the CPU (vLLM's CPU build, or no GPU)."""
    return _cpu_only()


def _eos_ids(path: str, tokenizer) -> set[int]:
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        eos = None
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def engine(path: str, options: VLLMOptions) -> Engine:
    """The engine for ``path`` with ``options``, started once per process."""
    from ..checkpoints import check_source

    check_source(path)
    key = (path, tuple(sorted(asdict(options).items())))
    with _engines_lock:
        if key not in _engines:
            _engines[key] = Engine(path, options)
        return _engines[key]


def close_engines() -> None:
    """Shut every engine of this process down (its engine-core processes with it)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for e in engines:
        e.close()


def _token_id(tokenizer, token: str) -> int | None:
    ids = tokenizer.convert_tokens_to_ids([token])
    return ids[0] if ids and ids[0] is not None and ids[0] != tokenizer.unk_token_id else None


def _sampling(settings: SamplingSettings, seed: int, **extra):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_new_tokens,
        seed=seed,
        skip_special_tokens=False,
        detokenize=False,
        **extra,
    )


class _InEngine:
    """A model in vLLM's engine (shared by every provider that names the same checkpoint). What
    it was fed and sampled in each conversation lives in the conversation's handle, under its view."""

    remote = True  #: vLLM's scheduler batches its requests, not userlm's lockstep
    role = ""

    def __init__(self, path: str, sampling: SamplingSettings, options: VLLMOptions):
        from ..vocab import vocab_tables

        self.name = f"vllm:{path}"
        self.view = f"{self.role}:{self.name}"  #: what this model keeps in a conversation's handle
        self.sampling = sampling
        self.engine = engine(path, options)
        self.is_space = table(vocab_tables(self.engine.tokenizer).whitespace.tolist())

    def _prompt(self, conversation: ConversationHandle | None, text: str, canonical, messages) -> list[int]:
        return conversation.prompt(self.view, text, self.engine.tokenizer, canonical, messages) if conversation else canonical()

    def _wrote(self, conversation: ConversationHandle | None, text: str, prompt: list[int], turn: list[int]) -> None:
        if conversation is not None:
            conversation.wrote(self.view, text, prompt, turn, self.engine.tokenizer, self.is_space)


class VLLMUserModel(_InEngine):
    """A UserLM-format user model in vLLM's engine; guardrails exact inside the sampler."""

    role = "user"

    def __init__(self, path: str, *, sampling: SamplingSettings, options: VLLMOptions = VLLMOptions()):
        super().__init__(path, sampling, options)
        self.samples_per_request = True  #: a request's own sampling is honoured (vLLM samples each request by its own)
        tok = self.engine.tokenizer
        self.end_id = _token_id(tok, END_OF_CONVERSATION)
        eot = _token_id(tok, END_OF_TURN)
        self.stop_ids = self.engine.eos | ({eot} if eot is not None else set())
        opening = turn_opening(tok)
        self.opening, self.opening_text, self.content_offset = opening.ids, opening.text, opening.content_offset

    def guard(self, request: UserTurnRequest) -> dict:
        """The guardrail arguments of ``request`` for :class:`userlm.models.vllm.guard.Guardrails`."""
        from ..vocab import banned_first_ids

        banned = banned_first_ids(self.engine.tokenizer, request.banned_first_words).tolist() if request.banned_first_words else []
        return {
            "end_id": self.end_id,
            "suppress_end": not request.end_may_be_sampled,
            "end_threshold": request.ending_threshold,
            "banned": banned,
            "content_offset": self.content_offset,
        }

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        tok = self.engine.tokenizer
        text = user_prompt_string(tok, request.intent, request.messages) + self.opening_text
        prompt = self._prompt(request.conversation, text, lambda: user_prompt_ids(tok, request.intent, request.messages) + self.opening,
                              request.messages)
        guard = self.guard(request)
        params = _sampling(
            request_sampling(request, self), request.seed,
            stop_token_ids=sorted(self.stop_ids | ({self.end_id} if self.end_id is not None else set())),
            logprob_token_ids=[self.end_id] if self.end_id is not None else None,
            extra_args={"userlm": guard},
        )
        tokens, logprobs, _reason = await self.engine.generate(prompt, params, request.conversation_key)
        turn = self._read(tokens, logprobs, guard["end_threshold"])
        kept, ended = turn.tokens, turn.ended
        self._wrote(request.conversation, text, prompt, kept)
        return UserDraft(
            text="" if ended else tok.decode(kept, skip_special_tokens=True).strip(),
            ended=ended,
            end_prob=turn.end_prob,
            prompt_tokens=len(prompt),
            completion_tokens=len(kept) + int(turn.finished),
            truncated=not turn.finished,
        )

    def _read(self, tokens: list[int], logprobs: list, threshold: float | None) -> TurnReader:
        """The turn vLLM returned, read by the rules every engine shares (:mod:`userlm.models.turn`),
        with P(end) from the end token's raw log-probability at each position."""
        rules = TurnRules(end=self.end_id, stops=frozenset(self.stop_ids), end_threshold=threshold, want_end_prob=True,
                          content_offset=self.content_offset)
        end = self.end_id
        return TurnReader(rules, self.is_space).read_all(
            tokens, (lambda step: _probability(logprobs, step, end)) if end is not None else None)


def _probability(logprobs: list, step: int, token: int) -> float | None:
    if step >= len(logprobs) or not logprobs[step]:
        return None
    entry = logprobs[step].get(token)
    if entry is None:
        return None
    value = entry.logprob if hasattr(entry, "logprob") else float(entry)
    return math.exp(value) if value > float("-inf") else 0.0


class VLLMChatModel(_InEngine):
    """An instruction-tuned model in vLLM's engine as the assistant, prompted with its own chat template."""

    role = "assistant"

    def __init__(self, path: str, *, sampling: SamplingSettings, options: VLLMOptions = VLLMOptions()):
        super().__init__(path, sampling, options)
        if not self.engine.tokenizer.chat_template:
            raise ConfigurationError(f"vllm:{path} has no chat template, so it cannot play the assistant.")

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        tok = self.engine.tokenizer
        text = chat_prompt_string(tok, messages)
        prompt = self._prompt(conversation, text, lambda: chat_prompt_ids(tok, messages), messages)
        params = _sampling(self.sampling, seed or 0, stop_token_ids=sorted(self.engine.eos))
        tokens, _, _ = await self.engine.generate(prompt, params, conversation.id if conversation else None)
        kept = [t for t in tokens if t not in self.engine.eos]
        self._wrote(conversation, text, prompt, kept)
        return ChatReply(
            text=tok.decode(kept, skip_special_tokens=True).strip(),
            prompt_tokens=len(prompt),
            completion_tokens=len(tokens),
        )
