"""B4: the engines side by side on B1's workload (64 intents, 4 user turns, the B1 models).

    .venv-vllm/bin/python benchmarks/engines.py            # make setup-vllm first
    .venv-vllm/bin/python benchmarks/engines.py --quick
    .venv-vllm/bin/python benchmarks/engines.py --side-by-side   # hf:, vllm: and the turn-by-turn loop (B4b)

Rows, all in this one process run, every engine loaded and warm first, the timed runs of the
in-process engines alternated (hf with and without its cross-turn cache, vllm:, vLLM turn by
turn) ``--repeats`` times and each one's median reported:

- ``card``: the UserLM-8b card's snippet in a loop (float32, one conversation at a time), on
  ``--card-conversations`` conversations: the baseline every ratio is against;
- ``hf`` / ``hf_no_cross_turn_cache``: ``userlm.simulate`` with ``hf:`` models (transformers'
  ``generate`` with the guardrail logits processor), each conversation's keys and values kept
  between its turns or not;
- ``vllm``: ``userlm.simulate`` with ``vllm:`` models (vLLM's async engine in this process,
  every guardrail in its sampler), placed as ``userlm simulate`` places two engines on CPUs
  (``userlm.models.vllm.engine.side_by_side``: half of the cores each, at most 3/8 of the
  conversations at once each);
- ``vllm_turn_by_turn``: the loop a user would write, on engines of vLLM's defaults (each on its
  half of the cores): every conversation's user turn together, wait for all, then every reply,
  and so on (no guardrails); its time in user turns and in replies is recorded too;
- ``openai_vllm_server``: ``userlm.simulate`` with ``openai:`` models against two real vLLM
  servers on this machine (started after the in-process engines are shut down).

All vLLM engines: chunked prefill off (vLLM's CPU build crashes on per-request seeds with it),
prefix caching on and emptied before every run, compiled (not eager), float32 (vLLM's fastest
here; ``hf:`` runs the bf16 that its auto picks on this CPU), each engine on half of the cores. ``--side-by-side``: ``hf``, ``vllm``
and ``vllm_turn_by_turn`` alone, as ratios to the turn-by-turn loop, saved as ``engines_vllm`` (B4b).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_models, intents, machine, save
from local_models import ASSISTANT_TOKENS, USER_TOKENS, baseline

KV_GB = 2.0
#: vLLM's fastest dtype on this CPU: its bf16 linear layers fall back to a slow path without AMX
#: (64 first user turns of B1: 45 s in bf16, 10 s in float32, eager, measured here)
VLLM_DTYPE = "float32"


def _settings(turns: int, n: int):
    import userlm

    return userlm.RunSettings(max_turns=turns, concurrency=n, seed=0)


def simulate(user_model, assistant, prompts: list[str], turns: int) -> dict:
    import userlm
    from userlm.guardrails import GuardrailConfig

    user = userlm.SimulatedUser(user_model, GuardrailConfig())
    start = time.perf_counter()
    run = userlm.simulate(prompts, user, assistant, settings=_settings(turns, len(prompts)), progress=False)
    seconds = time.perf_counter() - start
    errors = [c.error for c in run.conversations if c.error]
    if errors:
        raise SystemExit(f"a benchmark run failed: {errors[0]}")
    return {"seconds": seconds, "conversations": len(run.conversations),
            "user_turns": sum(len(c.user_turns()) for c in run.conversations)}


def turn_by_turn(user_engine, asst_engine, prompts: list[str], turns: int) -> dict:
    """What a user would write with vLLM's engine: each turn of every conversation together."""
    from vllm import SamplingParams

    from userlm.render import user_prompt_ids

    user_tok, asst_tok = user_engine.tokenizer, asst_engine.tokenizer
    end = user_tok.convert_tokens_to_ids("<|endconversation|>")
    eot = user_tok.convert_tokens_to_ids("<|eot_id|>")

    phases = {"user_s": 0.0, "assistant_s": 0.0}

    async def run():
        chats = [[] for _ in prompts]
        for turn in range(turns):
            began = time.perf_counter()
            async def user(i, chat):
                params = SamplingParams(temperature=1.0, top_p=0.8, max_tokens=USER_TOKENS, seed=i * 100 + turn,
                                        stop_token_ids=[eot], logit_bias={end: -100}, detokenize=False)
                ids, _, _ = await user_engine.generate(user_prompt_ids(user_tok, prompts[i], chat), params)
                return user_tok.decode(ids, skip_special_tokens=True).strip()

            texts = await asyncio.gather(*[user(i, c) for i, c in enumerate(chats)])
            phases["user_s"] += time.perf_counter() - began
            began = time.perf_counter()
            for chat, text in zip(chats, texts):
                chat.append({"role": "user", "content": text})

            async def reply(i, chat):
                params = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=ASSISTANT_TOKENS, seed=i * 100 + turn,
                                        stop_token_ids=sorted(asst_engine.eos), detokenize=False)
                ids = asst_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
                out, _, _ = await asst_engine.generate(list(ids), params)
                return asst_tok.decode(out, skip_special_tokens=True).strip()

            replies = await asyncio.gather(*[reply(i, c) for i, c in enumerate(chats)])
            phases["assistant_s"] += time.perf_counter() - began
            for chat, text in zip(chats, replies):
                chat.append({"role": "assistant", "content": text})

    start = time.perf_counter()
    asyncio.run(run())
    return {"seconds": time.perf_counter() - start, "conversations": len(prompts), "user_turns": len(prompts) * turns, **phases}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(model: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": str(int(KV_GB)), "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host",
                             "127.0.0.1", "--port", str(port), "--no-enable-chunked-prefill", "--disable-log-stats", "--dtype", VLLM_DTYPE],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the vLLM server for {model} exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(1)
    raise SystemExit("a vLLM server did not start in 600 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--card-conversations", type=int, default=8)
    parser.add_argument("--server-repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--side-by-side", action="store_true", help="only hf:, vllm: and the turn-by-turn loop")
    parser.add_argument("--models", default=str(Path(__file__).resolve().parent / "models"))
    args = parser.parse_args()
    if args.quick:
        args.conversations, args.repeats, args.card_conversations = 8, 1, 2

    from userlm.models.base import SamplingSettings
    from userlm.models.hf.local import LoadOptions, LocalChatModel, LocalUserModel
    from userlm.models.vllm.engine import Engine, VLLMChatModel, VLLMOptions, VLLMUserModel, close_engines, core_shares, side_by_side

    user_dir, asst_dir = build_models(Path(args.models))
    prompts = intents(args.conversations)
    user_sampling, asst_sampling = SamplingSettings(1.0, 0.8, USER_TOKENS), SamplingSettings(0.7, 1.0, ASSISTANT_TOKENS)
    print(f"machine: {machine()}", flush=True)

    started = time.perf_counter()
    user_cores, asst_cores = core_shares(2)
    plain = VLLMOptions(kv_cache_gb=KV_GB, dtype=VLLM_DTYPE)
    user_options, asst_options = side_by_side(plain, plain, len(prompts))  # as userlm simulate places them
    v_user = VLLMUserModel(str(user_dir), sampling=user_sampling, options=user_options)
    v_asst = VLLMChatModel(str(asst_dir), sampling=asst_sampling, options=asst_options)
    startup = time.perf_counter() - started
    print(f"vllm: two engines started in {startup:.1f} s (cores: user {user_options.cpus}, assistant {asst_options.cpus}; "
          f"at most {user_options.max_num_seqs} and {asst_options.max_num_seqs} conversations at once)", flush=True)
    # the loop's own engines: vLLM's defaults, on the same split of the cores (its two engines never run at once)
    loop_user = Engine(str(user_dir), VLLMOptions(kv_cache_gb=KV_GB, dtype=VLLM_DTYPE, cpus=user_cores))
    loop_asst = Engine(str(asst_dir), VLLMOptions(kv_cache_gb=KV_GB, dtype=VLLM_DTYPE, cpus=asst_cores))
    models = {
        "hf": (LocalUserModel(str(user_dir), sampling=user_sampling, options=LoadOptions(max_batch_size=len(prompts))),
               LocalChatModel(str(asst_dir), sampling=asst_sampling, options=LoadOptions(max_batch_size=len(prompts)))),
    }
    if not args.side_by_side:
        models["hf_no_cross_turn_cache"] = (
            LocalUserModel(str(user_dir), sampling=user_sampling, options=LoadOptions(max_batch_size=len(prompts), reuse_cache=False)),
            LocalChatModel(str(asst_dir), sampling=asst_sampling, options=LoadOptions(max_batch_size=len(prompts), reuse_cache=False)))
    models["vllm"] = (v_user, v_asst)

    def fresh(engines=(v_user.engine, v_asst.engine, loop_user, loop_asst)) -> None:  # every vLLM run starts from an empty prefix cache
        for engine in engines:
            engine.reset_prefix_cache()
    runs: dict[str, list[float]] = {name: [] for name in (*models, "vllm_turn_by_turn")}
    # an untimed warm-up run of each first
    warm: dict[str, list[float]] = {}
    load_before = os.getloadavg()
    for name, (u, a) in models.items():
        fresh()
        warm[name] = [simulate(u, a, prompts, args.turns)["seconds"]]
        print(f"warm-up {name}: {warm[name][0]:.1f} s", flush=True)
    fresh()
    warm["vllm_turn_by_turn"] = [turn_by_turn(loop_user, loop_asst, prompts, args.turns)["seconds"]]
    print("warm-up runs, s:", {k: [round(x, 1) for x in v] for k, v in warm.items()}, flush=True)
    phases: list[dict] = []  # the loop's time in its user turns and in its replies: what running them side by side could save
    for repeat in range(args.repeats):
        for name, (u, a) in models.items():
            fresh()
            runs[name].append(simulate(u, a, prompts, args.turns)["seconds"])
        fresh()
        loop = turn_by_turn(loop_user, loop_asst, prompts, args.turns)
        runs["vllm_turn_by_turn"].append(loop["seconds"])
        phases.append({"user_s": loop["user_s"], "assistant_s": loop["assistant_s"]})
        print(f"repeat {repeat + 1}:", {k: round(v[-1], 1) for k, v in runs.items()}, flush=True)
    load_after = os.getloadavg()
    loop_user.close()
    loop_asst.close()
    close_engines()
    if args.side_by_side:
        rows = {name: {"seconds": statistics.median(seconds), "runs_s": seconds} for name, seconds in runs.items()}
        loop = rows["vllm_turn_by_turn"]["seconds"]
        for name, r in rows.items():
            r["x_turn_by_turn"] = loop / r["seconds"]
            print(f"{name:<22}{r['seconds']:>8.1f} s  x turn-by-turn {r['x_turn_by_turn']:.2f}  runs {', '.join(f'{x:.1f}' for x in r['runs_s'])}")
        path = save("engines_vllm", {"machine": machine(), "conversations": len(prompts), "turns": args.turns, "vllm_dtype": VLLM_DTYPE,
                                     "cores": {"user": user_cores, "assistant": asst_cores},
                                     "vllm_most_at_once": {"user": user_options.max_num_seqs, "assistant": asst_options.max_num_seqs},
                                     "turn_by_turn_phases": phases, "load_before": load_before,
                                     "load_after": load_after, "rows": rows})
        print(f"saved {path}")
        return
    for name in ("hf", "hf_no_cross_turn_cache"):
        models.pop(name)
    del v_user, v_asst, models

    card = baseline(user_dir, asst_dir, prompts[: args.card_conversations], args.turns, "float32")
    print(f"card loop: {card['seconds']:.1f} s for {args.card_conversations} conversations", flush=True)

    from userlm.models.http.openai_compat import Endpoint, OpenAIChatModel, OpenAIUserModel

    servers = [_server(user_dir), _server(asst_dir)]
    try:
        (_, user_url), (_, asst_url) = servers
        h_user = OpenAIUserModel(str(user_dir), endpoint=Endpoint(base_url=user_url, concurrency=len(prompts)), sampling=user_sampling)
        h_asst = OpenAIChatModel(str(asst_dir), endpoint=Endpoint(base_url=asst_url, concurrency=len(prompts)), sampling=asst_sampling)
        simulate(h_user, h_asst, prompts, args.turns)  # warm-up
        runs["openai_vllm_server"] = [simulate(h_user, h_asst, prompts, args.turns)["seconds"] for _ in range(args.server_repeats)]
    finally:
        for proc, _ in servers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)

    card_rate = card["conversations"] / card["seconds"]
    rows = {"card": {"seconds": card["seconds"], "conversations": card["conversations"], "conversations_per_s": card_rate,
                     "runs_s": [card["seconds"]]}}
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        rows[name] = {"seconds": median, "conversations": len(prompts), "conversations_per_s": len(prompts) / median, "runs_s": seconds}
    print(f"\nB4: {len(prompts)} conversations x {args.turns} user turns; card loop on {args.card_conversations}")
    print(f"{'run':<22}{'median s':>10}{'conv/s':>9}{'x card':>8}{'x vllm':>8}  runs s")
    for name, r in rows.items():
        print(f"{name:<22}{r['seconds']:>10.1f}{r['conversations_per_s']:>9.3f}{r['conversations_per_s'] / card_rate:>8.1f}"
              f"{r['conversations_per_s'] / rows['vllm']['conversations_per_s']:>8.2f}  {', '.join(f'{x:.1f}' for x in r['runs_s'])}")
    path = save("engines", {"machine": machine(), "conversations": len(prompts), "turns": args.turns, "vllm_dtype": VLLM_DTYPE,
                            "card_conversations": args.card_conversations, "vllm_startup_s": startup, "warm_up_s": warm, "rows": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
