"""``userlm demo``: the main job end to end, offline, on this machine.

    userlm demo --out demo/

1. prepares the real Open-Assistant conversations that ship with userlm (``userlm.data``:
   filters, near-duplicates, split by user);
2. trains a small user model from scratch on their user turns (the no-intent variant: writing
   intents needs a chat model, which an offline machine does not have) and reports the
   validation user-turn perplexity before and after;
3. simulates conversations between that user model and an assistant that answers with the
   most fitting real assistant reply from the training data, under the guardrails, and prints
   one transcript;
4. evaluates the trained user model as a user simulator on the held-out threads (perplexity,
   first-turn diversity, intent decomposition, termination F1, role adherence) and writes
   ``eval/user_eval.md``;
5. writes ``report.html``: the conversations against the held-out real users, the evaluation,
   and a transcript browser.

Everything lands under ``--out``; running it again reuses what is there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .stopping import run_async


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("demo", help="prepare, train and simulate end to end, offline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo", metavar="DIR", help="where data, model and conversations go (default: demo/)")
    p.add_argument("--data", metavar="FILE", help="chat logs to train on (default: the Open-Assistant trees that ship with userlm)")
    p.add_argument("--epochs", type=float, default=2.0, help="training epochs (default: 2)")
    p.add_argument("--conversations", type=int, default=8, metavar="N", help="conversations to simulate (default: 8)")
    p.add_argument("--max-turns", type=int, default=4, metavar="N", help="user turns per conversation at most (default: 4)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..conversation import read_conversations
    from ..data import builtin_path
    from ..errors import UserError
    from ..guardrails import GuardrailConfig
    from ..intents import Intent
    from ..models.base import SamplingSettings
    from ..models.doubles.retrieval import RetrievalAssistant
    from ..models.hf.local import LocalUserModel
    from ..prepare.filters import filter_and_split, save_prepared
    from ..prepare.ingest import IngestStats, conversations_from
    from ..simulation import RunSettings, simulate
    from ..training.train import TrainConfig, train
    from ..user import SimulatedUser
    from .show import format_conversation

    out = Path(args.out)
    data = args.data or str(builtin_path("oasst"))
    if not Path(data).exists():
        raise UserError(f"--data {data}: no such file; point --data at chat logs (e.g. Open-Assistant trees), or leave it out.")
    prepared = out / "prepared"
    if not (prepared / "train.jsonl").exists():
        print(f"[1/5] preparing {'the Open-Assistant trees that ship with userlm' if args.data is None else data}", file=sys.stderr)
        stats = IngestStats()
        splits, report = filter_and_split(conversations_from(data, stats=stats))
        save_prepared(prepared, splits, report, [data], stats.rows, stats.dropped_messages)
        print(report.table(), file=sys.stderr)
    model_dir = out / "models" / "user"
    if not (model_dir / "config.json").exists():
        print("[2/5] training a small user model from scratch on the user turns (about a minute and a half on two cores)", file=sys.stderr)
        metrics = train(TrainConfig(data=str(prepared), out=str(model_dir), from_scratch="tiny", use_intent=False,
                                    max_length=1024, epochs=args.epochs, per_device_batch_size=8, effective_batch_size=8,
                                    vocab_size=2048, logging_steps=20, resume=True,
                                    # batches of similar lengths: the same targets, far less padding to compute
                                    extra={"train_sampling_strategy": "group_by_length"}))
        print(f"validation user-turn perplexity: {metrics['validation_user_turn_perplexity_before']:.1f} untrained, "
              f"{metrics['validation_user_turn_perplexity_after']:.1f} trained", file=sys.stderr)
    print("[3/5] simulating conversations with a stand-in assistant", file=sys.stderr)
    user = SimulatedUser(LocalUserModel(str(model_dir), sampling=SamplingSettings(1.0, 0.8, 48)), GuardrailConfig(min_turns=2))
    assistant = RetrievalAssistant(read_conversations(prepared / "train.jsonl"))
    intents = [Intent(id=f"open-{i}", text=None) for i in range(args.conversations)]
    run_file = out / "runs" / "demo.jsonl"
    summary = simulate(intents, user, assistant, out=run_file, settings=RunSettings(max_turns=args.max_turns))
    print(format_conversation(summary.conversations[0]))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.end_reasons.items())) or "none new"
    print(f"{summary.total} conversations ({reasons})", file=sys.stderr)

    from ..evaluation.simulators.evaluate import evaluate_users, intents_to_simulate
    from ..evaluation.simulators.parts import Simulator, UserEvalSettings
    from ..evaluation.simulators.scenarios import load_questions
    from ..evaluation.simulators.table import markdown

    print("[4/5] evaluating the user model as a simulator", file=sys.stderr)
    held_out = read_conversations(prepared / "test.jsonl")
    settings = UserEvalSettings(max_turns=2, scenario_limit=6, guardrails=GuardrailConfig(), resamples=500)
    evaluation = run_async(evaluate_users(
        [Simulator(f"hf:{model_dir}", user.model)], held_out, intents_to_simulate(None, held_out, 12), out / "eval",
        assistant=assistant, questions=load_questions("fixture:mcq", limit=6), settings=settings, detail=False,
    ))
    print(markdown(evaluation))

    from ..reports.data import build
    from ..reports.html import write

    print("[5/5] writing the report", file=sys.stderr)
    page = write(build([run_file], [out / "eval" / "user_eval.json"], prepared / "test.jsonl"), out / "report.html", "userlm demo")
    where = [
        (prepared, "the prepared conversations: train, validation and test splits, and report.json"),
        (model_dir, "the trained user model; metrics.json holds every logged figure"),
        (run_file, f"the simulated conversations; read them with: userlm show {run_file}"),
        (out / "eval" / "user_eval.md", "the evaluation table; every figure is in user_eval.json"),
        (page, "the report: the conversations, the evaluation and a transcript browser; open it in a browser"),
    ]
    width = max(len(str(path)) for path, _ in where)
    print("\nwhere each result is:\n" + "\n".join(f"  {path!s:<{width}}  {what}" for path, what in where), file=sys.stderr)
    return 0
