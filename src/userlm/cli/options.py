"""Command-line options shared by the commands that run models, turned into library objects."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..guardrails import GuardrailConfig
from ..models.base import SamplingSettings
from ..models.hf.local import LoadOptions
from ..models.http.openai_compat import Endpoint
from ..models.registry import ProviderOptions
from ..models.scale.replicas import ReplicaPlacement
from ..models.vllm.engine import VLLMOptions


def at_least(low: float, kind: type = int):
    """An argparse type: a number of ``kind`` no smaller than ``low``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low:g} or more, not {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def above_zero(text: str) -> float:
    """An argparse type: a number above 0."""
    value = at_least(0, float)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def probability(text: str) -> float:
    """An argparse type: a probability in (0, 1]."""
    value = above_zero(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
    return value


COUNT, NONNEGATIVE, NONNEGATIVE_FLOAT = at_least(1), at_least(0), at_least(0, float)


def add_model_options(parser: argparse.ArgumentParser, *, assistant: bool = True, user_required: bool = True,
                      many_users: bool = False, assistant_required: bool = True) -> None:
    g = parser.add_argument_group("user model")
    g.add_argument("--user", required=user_required, metavar="SPEC", action="append" if many_users else "store",
                   help="hf:PATH_OR_ID, vllm:PATH_OR_ID, openai:MODEL, prompted:SPEC or scripted:FILE" + (" (repeatable)" if many_users else ""))
    _add_sampling_options(g, "user", "user model", temperature=1.0, top_p=0.8, max_tokens=64, per="user turn",
                          source=", as on the UserLM-8b card")
    g.add_argument("--user-end-token-id", type=NONNEGATIVE, metavar="ID", help="id of <|endconversation|> on the user model's server")
    if assistant:
        g = parser.add_argument_group("assistant")
        g.add_argument("--assistant", required=assistant_required, metavar="SPEC", help="hf:PATH_OR_ID, vllm:PATH_OR_ID, openai:MODEL, python:MODULE:FN or scripted:FILE")
        _add_sampling_options(g, "assistant", "assistant", temperature=0.7, top_p=1.0, max_tokens=512, per="reply")
    g = parser.add_argument_group("local models and servers")
    g.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs and on CPUs with AMX or AVX-512 BF16, else fp32), float32, bfloat16, float16")
    g.add_argument("--trust-remote-code", action="store_true", help="allow a checkpoint's own code to run")
    g.add_argument("--ray", metavar="auto|HOST:PORT", help="run --user-replicas/--assistant-replicas on a Ray cluster: auto (this machine's, or a new local one) or its head's address")
    g.add_argument("--verbose", action="store_true", help="show Ray's own log lines with --ray (hidden by default)")
    g.add_argument("--replica-restart-wait", type=NONNEGATIVE_FLOAT, default=300.0, metavar="S",
                   help="once every replica is down, how long turns wait for Ray to restart one before the run stops, leaving "
                        "those conversations for the same command to finish (default: 300)")
    g.add_argument("--replica-cpus", type=above_zero, default=1.0, metavar="N", help="CPUs each replica asks of the Ray cluster (default: 1)")
    g.add_argument("--replica-gpus", type=NONNEGATIVE_FLOAT, metavar="N",
                   help="GPUs each replica asks of the Ray cluster (default: 1 for vllm: on a cluster with GPUs, else 0)")
    g.add_argument("--vllm-tensor-parallel", type=COUNT, default=1, metavar="N", help="vllm: GPUs each engine spans (default: 1)")
    g.add_argument("--vllm-gpu-memory", type=probability, default=0.9, metavar="F", help="vllm: share of each GPU's memory an engine may take (default: 0.9)")
    g.add_argument("--vllm-max-model-len", type=COUNT, metavar="N", help="vllm: longest sequence in tokens (default: the model's)")
    g.add_argument("--vllm-kv-cache-gb", type=above_zero, metavar="GB", help="vllm: KV-cache size in GiB (default: vLLM's on GPUs, 4 on CPUs)")
    g.add_argument("--vllm-quantization", metavar="METHOD", help="vllm: quantization method of the checkpoint (awq, gptq, fp8, ...)")
    g.add_argument("--vllm-max-seqs", type=COUNT, metavar="N", help="vllm: most sequences in one engine step (default: vLLM's)")
    g.add_argument("--vllm-eager", action="store_true", help="vllm: no compilation or graphs (starts faster, runs slower)")
    g.add_argument("--batch-size", type=COUNT, default=64, metavar="N", help="most sequences a local model runs at once (default: 64)")
    g.add_argument("--request-concurrency", type=COUNT, default=32, metavar="N", help="requests in flight per server (default: 32)")
    g.add_argument("--max-retries", type=NONNEGATIVE, default=5, metavar="N", help="retries of a failed request (5xx, 429, timeouts, cut or malformed answers): N + 1 attempts at most (default: 5)")
    g.add_argument("--timeout", type=above_zero, default=120.0, metavar="S", help="seconds per request (default: 120)")


def _add_sampling_options(g: argparse._ArgumentGroup, side: str, what: str, *, temperature: float, top_p: float, max_tokens: int,
                          per: str, source: str = "") -> None:
    """Where one side's model is served, how it samples, and how many copies of it run."""
    g.add_argument(f"--{side}-base-url", metavar="URL", help=f"OpenAI-compatible server of the {what} (default: OPENAI_BASE_URL)")
    g.add_argument(f"--{side}-temperature", type=NONNEGATIVE_FLOAT, default=temperature, metavar="T",
                   help=f"sampling temperature, 0 for greedy (default: {temperature}{source})")
    g.add_argument(f"--{side}-top-p", type=probability, default=top_p, metavar="P",
                   help=f"nucleus sampling: sample from the smallest set of tokens whose probability reaches P (default: {top_p}{source})")
    g.add_argument(f"--{side}-max-tokens", type=COUNT, default=max_tokens, metavar="N", help=f"new tokens per {per} (default: {max_tokens})")
    g.add_argument(f"--{side}-replicas", type=COUNT, default=1, metavar="N",
                   help=f"copies of an hf:/vllm: {what}, as Ray actors (needs --ray; default: 1)")


def add_guardrail_options(parser: argparse.ArgumentParser, *, min_turns: int | None = None) -> None:
    d = GuardrailConfig()
    g = parser.add_argument_group("guardrails (all on by default)")
    g.add_argument("--first-words", default=",".join(d.first_words), metavar="W,W", help=f"words a user turn may not start with (default: {','.join(d.first_words)})")
    g.add_argument("--no-first-word-filter", action="store_true", help="allow any first word")
    g.add_argument("--min-turns", type=NONNEGATIVE, metavar="N", default=min_turns,
                   help=f"user turns before the user may end (default: {'never' if min_turns is None else min_turns})")
    g.add_argument("--end-threshold", type=probability, metavar="P", help="end when P(<|endconversation|>) at a turn's start reaches P")
    g.add_argument("--min-words", type=NONNEGATIVE, default=d.min_words, metavar="N", help=f"fewest whitespace-separated words a user turn may have (default: {d.min_words})")
    g.add_argument("--max-words", type=COUNT, default=d.max_words, metavar="N", help=f"most whitespace-separated words a user turn may have (default: {d.max_words})")
    g.add_argument("--no-length-bounds", action="store_true", help="allow turns of any length")
    g.add_argument("--no-repetition-check", action="store_true", help="allow repeated turns and copies of the intent")
    g.add_argument("--max-attempts", type=COUNT, default=d.max_attempts, metavar="N", help=f"drafts per turn before giving up (default: {d.max_attempts})")
    g.add_argument("--no-guardrails", action="store_true", help="switch every guardrail off (ends still follow --min-turns)")
    f = parser.add_argument_group("faults (caught on every user turn and recorded; see userlm.faults)")
    f.add_argument("--reject-faults", metavar="NAME,NAME", default=(), type=fault_names,
                   help="faults that refuse a draft like a guardrail: it is drafted again, and the refusal names the fault "
                        "(role_inversion, reasoning_leak, intent_dump, premature_end, language_switch, degenerate)")
    f.add_argument("--fault-judge", metavar="SPEC", help="also ask this chat model for its verdict on every user turn (e.g. openai:gpt-4o-mini)")


def guardrails_from(args: argparse.Namespace) -> GuardrailConfig:
    from ..errors import UserError

    off = args.no_guardrails
    try:
        return GuardrailConfig(
            first_words=() if off or args.no_first_word_filter else tuple(args.first_words.split(",")),
            min_turns=args.min_turns,
            end_threshold=args.end_threshold,
            min_words=None if off or args.no_length_bounds else args.min_words,
            max_words=None if off or args.no_length_bounds else args.max_words,
            block_repetition=not (off or args.no_repetition_check),
            max_attempts=args.max_attempts,
        )
    except ValueError as exc:
        raise UserError(f"invalid guardrail setting: {exc}.") from None


def fault_names(value: str) -> tuple[str, ...]:
    """``--reject-faults``: fault names, each one of :data:`userlm.faults.FAULTS`."""
    from ..errors import UserError
    from ..faults import parse_fault_names

    try:
        return parse_fault_names(value, "")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def faults_from(args: argparse.Namespace):
    """The fault policy the flags ask for (:class:`userlm.user.FaultPolicy`)."""
    from ..models.registry import chat_model
    from ..user import FaultPolicy

    judge = chat_model(args.fault_judge) if args.fault_judge else None
    return FaultPolicy(reject=tuple(args.reject_faults), judge=judge)


def side_by_side(args: argparse.Namespace, user: ProviderOptions, assistant: ProviderOptions) -> tuple[ProviderOptions, ProviderOptions]:
    """On CPUs, two different ``vllm:`` engines in this process (the user and the assistant) get
    half of the cores each and a share of the conversations each at once, so that they run side by
    side instead of taking turns (vLLM would bind both to the same cores, and the conversations
    would move between them as one wave): :func:`userlm.models.vllm.engine.side_by_side`."""
    if not (args.user.startswith("vllm:") and args.assistant.startswith("vllm:")) or args.user == args.assistant \
            or user.replicas > 1 or assistant.replicas > 1:
        return user, assistant
    from ..models.vllm.engine import on_cpu
    from ..models.vllm.engine import side_by_side as placed

    try:
        if not on_cpu():
            return user, assistant
    except ImportError:  # no vLLM: the models say so, in one sentence, as they load
        return user, assistant
    user_vllm, assistant_vllm = placed(user.vllm, assistant.vllm, args.concurrency)
    return replace(user, vllm=user_vllm), replace(assistant, vllm=assistant_vllm)


def provider_options(args: argparse.Namespace, side: str) -> ProviderOptions:
    return ProviderOptions(
        sampling=SamplingSettings(
            temperature=getattr(args, f"{side}_temperature"),
            top_p=getattr(args, f"{side}_top_p"),
            max_new_tokens=getattr(args, f"{side}_max_tokens"),
        ),
        endpoint=Endpoint(
            base_url=getattr(args, f"{side}_base_url"),
            max_retries=args.max_retries,
            timeout_s=args.timeout,
            concurrency=args.request_concurrency,
        ),
        load=LoadOptions(
            device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, max_batch_size=args.batch_size
        ),
        vllm=VLLMOptions(
            tensor_parallel_size=args.vllm_tensor_parallel, gpu_memory_utilization=args.vllm_gpu_memory,
            max_model_len=args.vllm_max_model_len, dtype=args.dtype, quantization=args.vllm_quantization,
            kv_cache_gb=args.vllm_kv_cache_gb, max_num_seqs=args.vllm_max_seqs, enforce_eager=args.vllm_eager,
            trust_remote_code=args.trust_remote_code,
        ),
        end_token_id=getattr(args, "user_end_token_id", None) if side == "user" else None,
        replicas=getattr(args, f"{side}_replicas", 1),
        ray=args.ray,
        placement=ReplicaPlacement(cpus=args.replica_cpus, gpus=args.replica_gpus, ray_logs=args.verbose,
                                   restart_wait_s=args.replica_restart_wait),
        side=side,
    )
