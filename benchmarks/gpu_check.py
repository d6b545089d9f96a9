"""On a GPU machine: check the ``hf:`` engine's forward and time B1 at UserLM-8b's shape.

    python benchmarks/gpu_check.py --out gpu.json              # needs torch with CUDA, vllm, transformers
    python benchmarks/gpu_check.py --layers 4 --quick          # a smoke run on a small card

1. Logits: the ``hf:`` engine's batched decoding (prompts of different lengths, cache kept
   between turns) against the model's own forward on each full sequence, greedy; the largest
   absolute difference of the last-position logits and whether every greedy token agrees.
2. B1 at UserLM-8b's shape (Llama 3 8B: hidden 4096, 32 layers, 32 heads, 8 key-value heads,
   MLP 14336, vocabulary 128256), random bf16 weights: ``userlm.simulate`` with ``hf:`` and
   with ``vllm:`` (weights drawn by vLLM's dummy loader), against the card's snippet looped,
   on the same intents, turns and token budgets as B1. Printed as ratios, saved with ``--out``.
3. Each engine against the card's memory-bandwidth bound: decoding one token reads every weight
   once, so a conversation's turns cannot take less than (its tokens, one after another) x (the
   model's bytes) / (the card's bandwidth). The bound of a run is that of its longest
   conversation (all run at once); the row gives the measured run's share of it (1.0 would be
   the card's limit). The bandwidth is the card's published figure (``BANDWIDTH_GBS``, found by
   its name) or ``--bandwidth-gbs``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import intents, texts
from local_models import ASSISTANT_TOKENS, USER_TOKENS, baseline


def build(out: Path, layers: int) -> Path:
    """A UserLM-format model of Llama 3 8B's shape with random bf16 weights, saved once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from userlm.render import USERLM_CHAT_TEMPLATE
    from userlm.training.scratch import train_tokenizer

    if (out / "config.json").exists():
        return out
    tokenizer = train_tokenizer(texts(), vocab_size=4096, chat_template=USERLM_CHAT_TEMPLATE)
    config = LlamaConfig(vocab_size=128256, hidden_size=4096, num_hidden_layers=layers, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=8192, rope_theta=500000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"), tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def check_logits(path: Path, prompts: list[str]) -> dict:
    """The engine's batched greedy decoding, over two turns with each conversation's keys and
    values kept between them, against the model's own full forward over each whole sequence:
    per turn, how many rows' greedy tokens all agree."""
    import torch

    from userlm.models.hf.engine import PrefixCache, Row, generate
    from userlm.models.hf.local import LoadOptions, load
    from userlm.models.vocab import vocab_tables
    from userlm.render import user_prompt_ids

    loaded = load(str(path), LoadOptions(device="cuda", dtype="bfloat16"))
    tok, model = loaded.tokenizer, loaded.model
    cache = PrefixCache()
    out = {}
    prompts_ids = [user_prompt_ids(tok, p, []) for p in prompts]
    for turn in (1, 2):
        rows = [Row(prompt=ids, seed=i, key=str(i)) for i, ids in enumerate(prompts_ids)]
        results = generate(model, rows, stop_ids=set(), end_id=None, pad_id=loaded.pad_id, whitespace=vocab_tables(tok).whitespace,
                           temperature=0.0, top_p=1.0, max_new_tokens=16, prefix_cache=cache)
        agree = 0
        with torch.inference_mode():
            for row, res in zip(rows, results):
                logits = model(torch.tensor([row.prompt + res.tokens], device="cuda")).logits[0].float()
                agree += logits[len(row.prompt) - 1 : -1].argmax(-1).tolist() == res.tokens
        out[f"turn_{turn}"] = {"rows": len(rows), "greedy_rows_agreeing": agree}
        prompts_ids = [row.prompt + res.tokens + tok.encode(" Then what?", add_special_tokens=False) for row, res in zip(rows, results)]
    return out


#: published memory bandwidth, GB/s, by a part of the name torch gives the card (first match wins)
BANDWIDTH_GBS = {"H200": 4800, "H100 NVL": 3900, "H100 PCIe": 2000, "H100": 3350, "GH200": 4000, "B200": 8000,
                 "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L40": 864, "A10G": 600, "A10": 600,
                 "L4": 300, "RTX 4090": 1008, "RTX 6000 Ada": 960, "V100": 900, "T4": 320}


def bandwidth_gbs(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((gbs for part, gbs in BANDWIDTH_GBS.items() if part in name), None)


def bandwidth_bound_s(conversations, weight_bytes: int, gbs: float) -> float:
    """The least time the run could take on the card: its longest chain of tokens (a
    conversation's user and assistant tokens, one after another), each reading every weight."""
    longest = max(sum(u.completion_tokens for u in c.usage.values()) for c in conversations)
    return longest * weight_bytes / (gbs * 1e9)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gpu-models")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--card-conversations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bandwidth-gbs", type=float, help="the card's memory bandwidth (default: its published figure, by name)")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.quick:
        args.conversations, args.repeats, args.card_conversations = 8, 1, 1

    import torch

    import userlm
    from userlm.guardrails import GuardrailConfig
    from userlm.models.base import SamplingSettings
    from userlm.models.hf.local import LoadOptions, LocalChatModel, LocalUserModel
    from userlm.models.vllm.engine import VLLMChatModel, VLLMOptions, VLLMUserModel, close_engines

    path = build(Path(args.models) / f"userlm-8b-shape-{args.layers}", args.layers)
    prompts = intents(args.conversations)
    result: dict = {"gpu": torch.cuda.get_device_name(), "layers": args.layers, "conversations": len(prompts), "turns": args.turns}
    result["logits"] = check_logits(path, prompts[:8])
    print("logits:", result["logits"], flush=True)

    us, asst = SamplingSettings(1.0, 0.8, USER_TOKENS), SamplingSettings(0.7, 1.0, ASSISTANT_TOKENS)
    settings = userlm.RunSettings(max_turns=args.turns, concurrency=len(prompts), seed=0)

    last: dict = {}

    def run(u, a):
        def go():
            last["run"] = userlm.simulate(prompts, userlm.SimulatedUser(u, GuardrailConfig()), a, settings=settings, progress=False)
        return go

    # one model in both roles (it carries a chat template), as a same-model simulation would
    hf = LoadOptions(device="cuda", dtype="bfloat16", max_batch_size=len(prompts))
    hf_pair = (LocalUserModel(str(path), sampling=us, options=hf), LocalChatModel(str(path), sampling=asst, options=hf))
    weight_bytes = sum(p.numel() * p.element_size() for p in hf_pair[0].loaded.model.parameters())
    gbs = bandwidth_gbs(result["gpu"], args.bandwidth_gbs)
    result["weight_gb"], result["bandwidth_gbs"] = weight_bytes / 1e9, gbs
    bounds: dict[str, float] = {}
    run(*hf_pair)()  # warm-up
    seconds = {"hf": timed(run(*hf_pair), args.repeats)}
    if gbs:
        bounds["hf"] = bandwidth_bound_s(last["run"].conversations, weight_bytes, gbs)
    del hf_pair
    torch.cuda.empty_cache()
    v = VLLMOptions(gpu_memory_utilization=0.6, load_format="dummy")
    v_pair = (VLLMUserModel(str(path), sampling=us, options=v), VLLMChatModel(str(path), sampling=asst, options=v))
    run(*v_pair)()
    seconds["vllm"] = timed(run(*v_pair), args.repeats)
    if gbs:
        bounds["vllm"] = bandwidth_bound_s(last["run"].conversations, weight_bytes, gbs)
    close_engines()
    card = baseline(path, path, prompts[: args.card_conversations], args.turns, "bfloat16")
    card_rate = card["conversations"] / card["seconds"]
    result["rows"] = {"card_bf16": {"conversations_per_s": card_rate, "runs_s": [card["seconds"]]}}
    for name, runs in seconds.items():
        rate = len(prompts) / statistics.median(runs)
        result["rows"][name] = {"conversations_per_s": rate, "runs_s": runs, "x_card": rate / card_rate}
        if name in bounds:
            result["rows"][name] |= {"bandwidth_bound_s": bounds[name], "share_of_bound": bounds[name] / statistics.median(runs)}
    if not gbs:
        print(f"no published bandwidth known for {result['gpu']}: pass --bandwidth-gbs to compare with the card's bound", flush=True)
    for name, row in result["rows"].items():
        bound = f"  bound {row['bandwidth_bound_s']:.1f} s, {row['share_of_bound']:.2f} of it" if "share_of_bound" in row else ""
        print(f"{name:<10} {row['conversations_per_s']:.3f} conv/s  x card {row['conversations_per_s'] / card_rate:.1f}  runs {row['runs_s']}{bound}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
