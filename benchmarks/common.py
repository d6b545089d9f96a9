"""Shared pieces of the benchmarks: models, intents, timing and memory probes."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("USERLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"


def texts() -> list[str]:
    """Real user prompts (Open-Assistant) to train the benchmark tokenizers on."""
    path = SHARED / "oasst" / "prompt_lottery_en_250_text.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def intents(n: int) -> list[str]:
    """``n`` real Arena prompts, phrased as intents."""
    rows = [json.loads(line) for line in (SHARED / "arena-hard" / "question_v0.1.jsonl").read_text().splitlines()]
    prompts = [" ".join(r["prompt"].split())[:240] for r in rows]
    return [f"You are a user chatting with an assistant about this: {p}" for p in prompts[:n]]


def build_models(out: Path, *, hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1376, vocab=2048) -> tuple[Path, Path]:
    """A user model and an assistant of about 25M parameters each, randomly initialised with fixed seeds."""
    from userlm.training.scratch import ModelSize, build_random_model

    size = ModelSize(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate, max_positions=8192)
    paths = []
    for role, seed in (("user", 1), ("assistant", 2)):
        path = out / f"{role}-{hidden}x{layers}"
        if not (path / "config.json").exists():
            build_random_model(path, texts(), role=role, vocab_size=vocab, size=size, seed=seed)
        paths.append(path)
    return paths[0], paths[1]


def parameters(path: Path) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    # per token, every weight matrix but the input embedding does a multiply-add (the tied
    # output projection counts once as a matmul)
    return {"total": total, "matmul": total - embedding + model.get_output_embeddings().weight.numel()}


def peak_matmul_flops(seconds: float = 3.0, n: int = 1024, dtype=None) -> float:
    """Peak matmul FLOP/s of this machine in ``dtype`` (float32 by default), measured now."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory():
    """Peak resident memory while the block runs, above what was resident before it."""
    result = {"peak_bytes": 0}
    start, stop = _rss(), threading.Event()

    def watch():
        while not stop.is_set():
            result["peak_bytes"] = max(result["peak_bytes"], _rss() - start)
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def median_run(runs: list, seconds) -> object:
    """The run of median wall time, ``seconds(run)`` (the lower middle one of an even count)."""
    ranked = sorted(runs, key=seconds)
    return ranked[(len(ranked) - 1) // 2]


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
