"""``userlm demo``: the whole simulation pipeline offline, on small local models.

    userlm demo --out demo/

Builds a small user model and a small assistant on this machine (no downloads, no GPU),
simulates two conversations per example intent under the guardrails, and prints one
transcript. Everything lands under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="run the simulation pipeline offline on small local models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo", metavar="DIR", help="where models and conversations go (default: demo/)")
    p.add_argument("--intents", metavar="FILE", help="intents to simulate (default: the bundled examples)")
    p.add_argument("--samples", type=int, default=2, metavar="N")
    p.add_argument("--max-turns", type=int, default=4, metavar="N")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..guardrails import GuardrailConfig
    from ..intents import load_intents
    from ..models.base import SamplingSettings
    from ..models.local import LocalChatModel, LocalUserModel
    from ..simulation import RunSettings, simulate
    from ..training.scratch import build_random_model
    from ..user import SimulatedUser
    from .show import format_conversation

    out = Path(args.out)
    intents_path = Path(args.intents) if args.intents else Path(str(files("userlm").joinpath("data/example_intents.jsonl")))
    intents = load_intents(intents_path)
    texts = [i.text or "" for i in intents]
    models = {}
    for role in ("user", "assistant"):
        path = out / "models" / role
        if not (path / "config.json").exists():
            print(f"building a small {role} model in {path}", file=sys.stderr)
            build_random_model(path, texts * 20, role=role, vocab_size=512, seed=1 if role == "user" else 2)
        models[role] = path
    sampling = SamplingSettings(temperature=1.0, top_p=0.8, max_new_tokens=32)
    user = SimulatedUser(LocalUserModel(str(models["user"]), sampling=sampling), GuardrailConfig())
    assistant = LocalChatModel(str(models["assistant"]), sampling=SamplingSettings(0.7, 1.0, 48))
    run_file = out / "runs" / "demo.jsonl"
    summary = simulate(intents, user, assistant, out=run_file, settings=RunSettings(samples=args.samples, max_turns=args.max_turns))
    print(format_conversation(summary.conversations[0]))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.end_reasons.items())) or "none new"
    print(f"\n{run_file}: {summary.total} conversations ({reasons}); read them with: userlm show {run_file}", file=sys.stderr)
    return 0
