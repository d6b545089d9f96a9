"""B1 and B2: simulation throughput with local models on the CPU.

    python benchmarks/local_models.py            # B1 (64 intents, 4 turns) and B2 (2..16 turns)
    python benchmarks/local_models.py --quick    # fewer conversations, for a smoke run

Baseline: the UserLM-8b model card's snippet in a loop: one conversation at a time,
``apply_chat_template`` on the whole history and ``generate`` at every turn, for the user model
and for the assistant. Ours: ``userlm.simulate`` with local models (every waiting conversation in
one batch, each conversation's keys and values kept between turns). Same models, intents, turn
counts and token budgets, in the same process. Both sides first run untimed to their steady state;
the baselines (minutes each) are then measured once, ours (seconds) ``--repeats`` times, its
median run reported.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_models, intents, machine, median_run, parameters, peak_matmul_flops, peak_memory, save

USER_TOKENS, ASSISTANT_TOKENS = 32, 64


def baseline(user_dir: Path, assistant_dir: Path, prompts: list[str], turns: int, dtype: str = "float32") -> dict:
    """The model card's snippet, looped (the card loads the model in its default float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    user_tok, asst_tok = AutoTokenizer.from_pretrained(user_dir), AutoTokenizer.from_pretrained(assistant_dir)
    kind = getattr(torch, dtype)
    user_lm = AutoModelForCausalLM.from_pretrained(user_dir, dtype=kind).eval()
    asst_lm = AutoModelForCausalLM.from_pretrained(assistant_dir, dtype=kind).eval()
    eot = user_tok.convert_tokens_to_ids("<|eot_id|>")
    end = user_tok.convert_tokens_to_ids("<|endconversation|>")
    torch.manual_seed(0)
    prefilled = generated = 0
    start = time.perf_counter()
    for intent in prompts:
        messages = [{"role": "system", "content": intent}]
        for _ in range(turns):
            inputs = user_tok.apply_chat_template(messages, return_tensors="pt", add_generation_prompt=True, return_dict=False)
            output = user_lm.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=True, top_p=0.8,
                                      temperature=1.0, max_new_tokens=USER_TOKENS, eos_token_id=eot, pad_token_id=eot,
                                      bad_words_ids=[[end]])
            new = output[0, inputs.shape[1]:]
            prefilled, generated = prefilled + inputs.shape[1], generated + len(new)
            messages.append({"role": "user", "content": user_tok.decode(new, skip_special_tokens=True).strip()})
            chat = messages[1:]
            inputs = asst_tok.apply_chat_template(chat, return_tensors="pt", add_generation_prompt=True, return_dict=False)
            output = asst_lm.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=True, top_p=1.0,
                                      temperature=0.7, max_new_tokens=ASSISTANT_TOKENS, eos_token_id=eot, pad_token_id=eot)
            new = output[0, inputs.shape[1]:]
            prefilled, generated = prefilled + inputs.shape[1], generated + len(new)
            messages.append({"role": "assistant", "content": asst_tok.decode(new, skip_special_tokens=True).strip()})
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "conversations": len(prompts), "prefilled_tokens": prefilled, "generated_tokens": generated,
            "dtype": dtype}


@functools.cache
def _our_models(user_dir: Path, assistant_dir: Path, batch: int):
    """Loaded once per process and used by every run, as a user running several simulations would."""
    from userlm.models.base import SamplingSettings
    from userlm.models.hf.local import LoadOptions, LocalChatModel, LocalUserModel

    options = LoadOptions(max_batch_size=batch)
    user_model = LocalUserModel(str(user_dir), sampling=SamplingSettings(1.0, 0.8, USER_TOKENS), options=options)
    asst = LocalChatModel(str(assistant_dir), sampling=SamplingSettings(0.7, 1.0, ASSISTANT_TOKENS), options=options)
    return user_model, asst


def ours(user_dir: Path, assistant_dir: Path, prompts: list[str], turns: int, guardrails: bool) -> dict:
    import userlm
    from userlm.guardrails import OFF, GuardrailConfig
    from userlm.models.hf.engine import EngineStats

    user_model, asst = _our_models(user_dir, assistant_dir, len(prompts))
    for model in (user_model, asst):  # fresh counters; every run starts without cached conversations (simulate forgets them)
        model.stats = EngineStats()
    config = GuardrailConfig() if guardrails else OFF
    user = userlm.SimulatedUser(user_model, config)
    start = time.perf_counter()
    run = userlm.simulate(prompts, user, asst, settings=userlm.RunSettings(max_turns=turns, concurrency=len(prompts), seed=0),
                          progress=False)
    seconds = time.perf_counter() - start
    dtype = str(user_model.loaded.model.dtype).removeprefix("torch.")
    drafts = sum(m.attempts or 1 for c in run.conversations for m in c.user_turns())
    turns_done = sum(len(c.user_turns()) for c in run.conversations)
    stats = [user_model.stats, asst.stats]
    return {
        "seconds": seconds,
        "conversations": len(run.conversations),
        "prefilled_tokens": sum(s.prefill_tokens for s in stats),
        "reused_tokens": sum(s.reused_tokens for s in stats),
        "generated_tokens": sum(s.decode_tokens for s in stats),
        "user_turns": turns_done,
        "drafts_per_user_turn": drafts / max(turns_done, 1),
        "end_reasons": dict(run.end_reasons),
        "dtype": dtype,
        "prefill_seconds": user_model.stats.prefill_seconds + asst.stats.prefill_seconds,
        "engine_seconds": user_model.stats.seconds + asst.stats.seconds,
    }


def warm_up(user_dir: Path, assistant_dir: Path, prompts: list[str], turns: int) -> None:
    """The baseline one whole conversation in each dtype (each of its conversations then repeats
    the same work); ours the whole workload once (its key/value buffers then fit the conversations,
    as they do after the first batches of a long simulation)."""
    for dtype in ("float32", "bfloat16"):
        baseline(user_dir, assistant_dir, prompts[:1], turns, dtype)
    ours(user_dir, assistant_dir, prompts, turns, False)


def summarise(result: dict, matmul_params: float, peaks: dict) -> dict:
    peak = peaks[result["dtype"]]
    tokens = result["prefilled_tokens"] + result["generated_tokens"]
    flops = 2 * matmul_params * tokens
    return {
        **result,
        "conversations_per_s": result["conversations"] / result["seconds"],
        "generated_tokens_per_s": result["generated_tokens"] / result["seconds"],
        "prefilled_tokens_per_s": result["prefilled_tokens"] / result["seconds"],
        "model_flops_per_s": flops / result["seconds"],
        "mfu": flops / result["seconds"] / peak,
    }


def _seconds(result: dict) -> str:
    return ", ".join(f"{s:.1f}" for s in result["runs_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--scaling", default="2,4,8,16", help="B2 turn counts ('' skips B2)")
    parser.add_argument("--baseline-scaling-conversations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours per setting; the median is reported")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default=str(Path(__file__).resolve().parent / "models"))
    args = parser.parse_args()
    if args.quick:
        args.conversations, args.scaling, args.repeats = 8, "2,4", 1
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    user_dir, asst_dir = build_models(Path(args.models))
    params = parameters(user_dir)
    peaks = {"float32": peak_matmul_flops(dtype=torch.float32), "bfloat16": peak_matmul_flops(dtype=torch.bfloat16)}
    prompts = intents(args.conversations)
    print(f"machine: {machine()}; peak matmul {peaks['float32'] / 1e9:.0f} GFLOP/s float32, {peaks['bfloat16'] / 1e9:.0f} "
          f"GFLOP/s bfloat16; models: {params['total'] / 1e6:.1f}M parameters each")

    # untimed: each side's first run in a process pays for kernel selection and the allocator's
    # first mappings; neither side should carry that in its measurement
    warm_up(user_dir, asst_dir, prompts, args.turns)
    b1 = {}
    for name, dtype in (("baseline", "float32"), ("baseline_bf16", "bfloat16")):
        with peak_memory() as mem:
            b1[name] = baseline(user_dir, asst_dir, prompts, args.turns, dtype)
        b1[name]["peak_memory_mb"] = mem["peak_bytes"] / 2**20
    # ours runs in seconds, so it is measured several times (guardrails off and on in turn) and
    # its median run reported: one run on a shared machine can be 30% off either way
    runs: dict[str, list[dict]] = {"ours_guardrails_off": [], "ours_guardrails_on": []}
    for _ in range(args.repeats):
        for name, guard in (("ours_guardrails_off", False), ("ours_guardrails_on", True)):
            with peak_memory() as mem:
                result = ours(user_dir, asst_dir, prompts, args.turns, guard)
            result["peak_memory_mb"] = mem["peak_bytes"] / 2**20
            runs[name].append(result)
    for name, results in runs.items():
        b1[name] = {**median_run(results, lambda r: r["seconds"]), "runs_s": [r["seconds"] for r in results]}
    b1 = {k: summarise(v, params["matmul"], peaks) for k, v in b1.items()}
    base = b1["baseline"]["conversations_per_s"]
    base16 = b1["baseline_bf16"]["conversations_per_s"]
    print(f"\nB1: {args.conversations} conversations x {args.turns} user turns, user {USER_TOKENS} / assistant {ASSISTANT_TOKENS} new tokens")
    print(f"{'run':<22}{'dtype':>9}{'conv/s':>9}{'x base':>8}{'x bf16 base':>12}{'gen tok/s':>11}{'prefill tok/s':>15}"
          f"{'MFU':>7}{'peak MB':>9}{'drafts/turn':>12}")
    for name, r in b1.items():
        print(f"{name:<22}{r['dtype']:>9}{r['conversations_per_s']:>9.3f}{r['conversations_per_s'] / base:>8.1f}"
              f"{r['conversations_per_s'] / base16:>12.1f}{r['generated_tokens_per_s']:>11.0f}"
              f"{r['prefilled_tokens_per_s']:>15.0f}{r['mfu']:>7.3f}{r['peak_memory_mb']:>9.0f}{r.get('drafts_per_user_turn', 1.0):>12.2f}")
    print("MFU: model FLOPs (2 x matmul parameters x tokens computed; attention scores not counted) per second, "
          "over the peak matmul FLOP/s of the run's dtype measured above")
    on, off = b1["ours_guardrails_on"]["seconds"], b1["ours_guardrails_off"]["seconds"]
    print(f"guardrails on / off wall time: {on / off:.2f} (medians of {args.repeats} runs each; all runs, s: "
          f"off {_seconds(b1['ours_guardrails_off'])}, on {_seconds(b1['ours_guardrails_on'])})")

    b2 = []
    if args.scaling:
        print("\nB2: prefilled tokens per user turn as conversations grow")
        print(f"{'turns':>6}{'ours prefill/turn':>19}{'ours s/turn':>13}{'baseline prefill/turn':>23}{'baseline s/turn':>17}")
        for turns in [int(t) for t in args.scaling.split(",")]:
            mine = ours(user_dir, asst_dir, prompts, turns, False)
            theirs = baseline(user_dir, asst_dir, prompts[: args.baseline_scaling_conversations], turns, "bfloat16")
            row = {
                "turns": turns,
                "ours_prefilled_per_turn": mine["prefilled_tokens"] / mine["user_turns"],
                "ours_seconds_per_turn": mine["seconds"] / mine["user_turns"],
                "baseline_prefilled_per_turn": theirs["prefilled_tokens"] / (theirs["conversations"] * turns),
                "baseline_seconds_per_turn": theirs["seconds"] / (theirs["conversations"] * turns),
            }
            b2.append(row)
            print(f"{turns:>6}{row['ours_prefilled_per_turn']:>19.0f}{row['ours_seconds_per_turn']:>13.4f}"
                  f"{row['baseline_prefilled_per_turn']:>23.0f}{row['baseline_seconds_per_turn']:>17.4f}")
    path = save("local_models", {"machine": machine(), "peak_matmul_flops": peaks, "parameters": params, "b1": b1, "b2": b2})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
