"""Write benchmarks/RESULTS.md from the JSON files the benchmarks saved in benchmarks/results/.

    python benchmarks/write_results.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str) -> dict | None:
    path = HERE / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    lines = ["# Benchmark results", "", "Written by `python benchmarks/write_results.py` from `benchmarks/results/*.json`;",
             "each benchmark measures its baseline and ours in the same process run.", ""]
    local = load("local_models")
    if local:
        b1 = local["b1"]
        base, base16 = b1["baseline"]["conversations_per_s"], b1["baseline_bf16"]["conversations_per_s"]
        peaks = local["peak_matmul_flops"]
        lines += ["## B1: local models on the CPU", "",
                  f"Machine: {local['machine']}; peak matmul measured in the run: {peaks['float32'] / 1e9:.0f} GFLOP/s float32, "
                  f"{peaks['bfloat16'] / 1e9:.0f} GFLOP/s bfloat16. Models: Llama architecture, hidden 512, 8 layers, 8 heads, "
                  f"4 key-value heads, {local['parameters']['total'] / 1e6:.1f}M parameters each, random weights with fixed seeds. "
                  "64 intents (real Arena prompts), 4 user turns, user turns up to 32 new tokens, assistant turns up to 64.", "",
                  "| run | dtype | conv/s | x baseline (card, fp32) | x baseline in bf16 | generated tok/s | prefilled tok/s | MFU | peak memory MB | drafts per user turn |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in b1.items():
            lines.append(f"| {name} | {r['dtype']} | {r['conversations_per_s']:.3f} | {r['conversations_per_s'] / base:.1f} | "
                         f"{r['conversations_per_s'] / base16:.1f} | {r['generated_tokens_per_s']:.0f} | {r['prefilled_tokens_per_s']:.0f} | "
                         f"{r['mfu']:.3f} | {r['peak_memory_mb']:.0f} | {r.get('drafts_per_user_turn', 1.0):.2f} |")
        on, off = b1["ours_guardrails_on"]["seconds"], b1["ours_guardrails_off"]["seconds"]
        runs = {k: ", ".join(f"{x:.1f}" for x in b1[k]["runs_s"]) for k in ("ours_guardrails_off", "ours_guardrails_on") if "runs_s" in b1[k]}
        lines += ["", f"Guardrails on / off wall time: {on / off:.2f}.",
                  "Ours: the median of its runs; every run's wall time in seconds: "
                  + "; ".join(f"{k.removeprefix('ours_')}: {v}" for k, v in runs.items()) + "." if runs else "",
                  "MFU counts 2 x matmul parameters per computed token (attention scores not counted), over the peak of the run's dtype.", ""]
        if local["b2"]:
            lines += ["## B2: cost per turn as conversations grow", "",
                      "| user turns | ours: prefilled tokens per user turn | ours: seconds per user turn | baseline: prefilled tokens per user turn | baseline: seconds per user turn |",
                      "|---|---|---|---|---|"]
            for r in local["b2"]:
                lines.append(f"| {r['turns']} | {r['ours_prefilled_per_turn']:.0f} | {r['ours_seconds_per_turn']:.4f} | "
                             f"{r['baseline_prefilled_per_turn']:.0f} | {r['baseline_seconds_per_turn']:.4f} |")
            lines.append("")
    b3 = sorted((json.loads(p.read_text()) for p in (HERE / "results").glob("http_runner_py*.json")),
                key=lambda r: [int(x) for x in r["python"].split(".")])
    if b3:
        first = b3[0]
        lines += ["## B3: HTTP runner", "",
                  f"{first['conversations']} conversations x 4 turns ({first['requests']} requests), concurrency {first['concurrency']}, "
                  f"stand-in server answering after {first['delay_s'] * 1000:.0f} ms, on the same machine. Median of the runs.", "",
                  "| Python | ideal wall s | measured wall s | efficiency | efficiency of each run | runner CPU ms per request |",
                  "|---|---|---|---|---|---|"]
        for r in b3:
            runs = ", ".join(f"{e:.3f}" for e in r["efficiency_of_runs"])
            lines.append(f"| {r['python']} | {r['ideal_wall_s']:.2f} | {r['wall_s']:.2f} | {r['efficiency']:.3f} | {runs} | "
                         f"{r['runner_cpu_ms_per_request']:.3f} |")
        lines.append("")
    scales = [s for s in (load("report_scale"), load("report_scale_50000")) if s]
    if scales:
        lines += ["## Report at scale", "",
                  "`benchmarks/report_scale.py`: scripted conversations (4 user turns, a fifth of the drafts refused, no P(end)) in "
                  "one HTML file, opened in headless Chromium at 1400x1000. Checks: the page's own plot checks, each as the run saw it.", "",
                  "| conversations | HTML MB | build s | load in headless Chromium s | first search s | filter s | plot checks |",
                  "|---|---|---|---|---|---|---|"]
        for scale in scales:
            checks = scale.get("checks")
            passed = "not run" if checks is None else f"{sum(v is True for v in checks.values())} of {len(checks)} hold"
            lines.append(f"| {scale['conversations']} | {scale['html_mb']:.1f} | {scale['build_s']:.1f} | {scale['load_s']:.2f} | "
                         f"{scale['first_search_s']:.2f} | {scale['filter_s']:.2f} | {passed} |")
        lines.append("")
        checked = [s for s in scales if s.get("checks")]
        if checked:
            lines += [f"At {checked[-1]['conversations']:,} conversations: " + "; ".join(
                f"{k}: {'yes' if v is True else v}" for k, v in checked[-1]["checks"].items())
                + f" (screenshot: `results/{checked[-1].get('screenshot')}`).", ""]
    engines = load("engines")
    if engines:
        rows = engines["rows"]
        card, vllm = rows["card"]["conversations_per_s"], rows["vllm"]["conversations_per_s"]
        lines += ["## B4: the engines on B1's workload", "",
                  f"Machine: {engines['machine']}. B1's models and workload: {engines['conversations']} conversations x "
                  f"{engines['turns']} user turns (user turns up to 32 new tokens, assistant turns up to 64); the card's loop "
                  f"on {engines['card_conversations']} of them. All in one process run, every engine loaded and warm, the "
                  "in-process runs alternated; each row the median of its runs. `hf:` in bf16 (its auto on this CPU); vLLM's "
                  f"CPU build {engines.get('vllm_dtype', 'float32')} (its faster dtype here), compiled, chunked prefill off. "
                  f"Two vLLM engines took {engines['vllm_startup_s']:.0f} s to start; untimed first runs, s: "
                  + ", ".join(f"{k} {v[0]:.1f}" for k, v in engines["warm_up_s"].items()) + ".", "",
                  "| run | conv/s | x card loop | x vllm: | runs, s |", "|---|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['conversations_per_s']:.3f} | {r['conversations_per_s'] / card:.1f} | "
                         f"{r['conversations_per_s'] / vllm:.2f} | {', '.join(f'{x:.1f}' for x in r['runs_s'])} |")
        lines.append("")
    side = load("engines_vllm")
    if side:
        most = side.get("vllm_most_at_once")
        placed = (f"`vllm:` placed as `userlm simulate` places two engines on CPUs: the user engine on core(s) {side['cores']['user']} "
                  f"and the assistant's on core(s) {side['cores']['assistant']}, at most {most['user']} and {most['assistant']} conversations "
                  "at once each; the loop on two engines of vLLM's defaults on the same cores") if most else (
                  f"both vLLM rows on the same two engines, the user engine's worker on cores {side['cores']['user']} and the "
                  f"assistant's on {side['cores']['assistant']}")
        lines += ["## B4b: `hf:` and `vllm:` against a turn-by-turn loop on vLLM", "",
                  f"Machine: {side['machine']}; load average before {side['load_before'][0]:.2f}, after {side['load_after'][0]:.2f}. "
                  f"B1's models and workload ({side['conversations']} conversations x {side['turns']} user turns), `hf:` in bf16 "
                  f"(its auto here), vLLM in {side.get('vllm_dtype', 'float32')} (compiled, chunked prefill off); {placed}. Every "
                  "run from an empty prefix cache, rows alternated after an untimed run of each; the median of each row's runs.", "",
                  "| run | median s | x turn-by-turn loop | runs, s |", "|---|---|---|---|"]
        for name, r in side["rows"].items():
            lines.append(f"| {name} | {r['seconds']:.1f} | {r['x_turn_by_turn']:.2f} | {', '.join(f'{x:.1f}' for x in r['runs_s'])} |")
        if side.get("turn_by_turn_phases"):
            phases = side["turn_by_turn_phases"]
            lines += ["", "The loop's time in user turns and in replies, s: " + "; ".join(
                f"{p['user_s']:.1f} and {p['assistant_s']:.1f}" for p in phases) + ". Run side by side at the same speed, "
                "the two could at best take the longer of the two."]
        lines.append("")
    memory = load("driver_memory")
    if memory:
        lines += ["## B5: the driver's memory as a run grows", "",
                  f"Machine: {memory['machine']}. `userlm simulate` with scripted models (4 user turns each), a fresh process "
                  "per size; peak resident memory of the whole process (Python, userlm and its imports included).", "",
                  "| conversations | peak MB | x the smallest | wall s | CPU ms per user turn | output MB | load before, after |",
                  "|---|---|---|---|---|---|---|"]
        for r in memory["rows"]:
            lines.append(f"| {r['conversations']} | {r['peak_rss_mb']:.0f} | {r['x_smallest']:.2f} | {r['wall_s']:.1f} | "
                         f"{r['cpu_ms_per_turn']:.3f} | {r['output_mb']:.0f} | {r['load_before']:.2f}, {r['load_after']:.2f} |")
        resume = memory["resume"]
        lines += ["", f"Resuming the {resume['conversations']}-conversation run with every conversation already written: peak "
                  f"{resume['peak_rss_mb']:.0f} MB ({resume['peak_rss_mb'] / memory['rows'][0]['peak_rss_mb']:.2f}x the smallest run), "
                  f"{resume['wall_s']:.1f} s (load {resume['load_before']:.2f}, {resume['load_after']:.2f}).", ""]
    replicas = load("replicas")
    if replicas:
        lines += ["## B6: replicas on a local Ray cluster", "",
                  f"Machine: {replicas['machine']}. {replicas['conversations']} conversations x {replicas['turns']} user turns, "
                  "B1's models; the user model as Ray actors (1 CPU each), the assistant in the driver's process. Two cores bound "
                  "this: the replicas share them with each other and the assistant, so these rows show the cost of the actor hop, "
                  "not a cluster's scaling. Driver CPU includes the assistant's own compute here.", "",
                  "| run | s | conv/s | x in process | driver process CPU ms per user turn (its in-process assistant included) |", "|---|---|---|---|---|"]
        for name, r in replicas["rows"].items():
            lines.append(f"| {name} | {r['seconds']:.1f} | {r['conversations_per_s']:.3f} | {r['x_in_process']:.2f} | "
                         f"{r['driver_cpu_ms_per_user_turn']:.0f} |")
        lines.append("")
    rl = load("rl_envs")
    if rl:
        rows = rl["rows"]
        lines += ["## B7: RL environments sharing one simulated user", "",
                  f"Machine: {rl['machine']}; load average before {rl['load_before'][0]:.2f}, after {rl['load_after'][0]:.2f}. "
                  f"{rl['environments']} environments (`Episode`, what the verifiers, SkyRL-Gym and TRL integrations run), "
                  f"{rl['turns']} user turns each, B1's user model (`hf:`, user turns up to 32 new tokens), the policy's replies "
                  "fixed text; every row from an empty prefix cache, rows alternated, the median of "
                  f"{rl['rounds']} rounds.", "",
                  "| run | user turns/s | x one at a time | every run (user turns, s) |", "|---|---|---|---|"]
        for name, r in rows.items():
            runs = "; ".join(f"{t}, {s:.1f}" for t, s in r["runs"])
            lines.append(f"| {name} | {r['user_turns_per_s']:.2f} | {r['x_one_at_a_time']:.2f} | {runs} |")
        lines.append("")
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
