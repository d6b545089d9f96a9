"""``userlm eval-assistant``: how well an assistant serves users across multi-turn conversations.

    userlm eval-assistant --tasks gsm8k:test.jsonl --tasks humaneval:HumanEval.jsonl.gz \\
        --user hf:microsoft/UserLM-8b --assistant openai:my-model --samples 10 --out eval/

The same tasks reach the assistant whole in one turn (full), all shards in one turn (concat), one
shard per turn (sharded) and through a simulated user (simulated). Writes ``eval/assistant.json``
(every figure and per-conversation results), ``eval/assistant.md`` and the transcripts in
``eval/transcripts/``; running it again resumes.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_guardrail_options, add_model_options, faults_from, guardrails_from, provider_options, side_by_side
from .stopping import run_async


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval-assistant", help="evaluate an assistant on tasks under simulated users", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", action="append", required=True, metavar="SUITE:PATH", help="gsm8k, humaneval or sharded (the built-in copies), or gsm8k:PATH, humaneval:PATH, sharded:PATH, custom:PATH (repeatable)")
    p.add_argument("--scorer", metavar="FILE.py:FN", help="scorer of custom tasks: FN(task, answer) -> score in [0, 1]")
    p.add_argument("--modes", default="full,concat,sharded,simulated", metavar="M,M",
                   help="comma-separated modes out of full, concat, sharded, simulated (default: all four)")
    p.add_argument("--samples", type=int, default=1, metavar="N", help="conversations per task and mode")
    p.add_argument("--max-turns", type=int, default=8, metavar="N", help="user turns per conversation at most (default: 8)")
    p.add_argument("--limit", type=int, metavar="N", help="first N tasks of each suite")
    p.add_argument("--extractor", metavar="SPEC", help="a chat model that extracts answers (default: rules)")
    p.add_argument("--rephrase", metavar="SPEC", help="a chat model that rephrases shards after the first")
    p.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    p.add_argument("--concurrency", type=int, default=32, metavar="N", help="conversations in flight (default: 32)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for assistant.json, assistant.md and the transcripts")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p, user_required=False)
    add_guardrail_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:

    from ..errors import UserError
    from ..evaluation.assistants.evaluate import MODES, EvalSettings, evaluate
    from ..evaluation.assistants.tasks import load_suite
    from ..models.registry import chat_model, user_model

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise UserError(f"unknown mode(s) {', '.join(unknown) or '(none)'}; use some of {', '.join(MODES)}.")
    if "simulated" in modes and not args.user:
        raise UserError("the simulated mode needs --user SPEC (or leave it out of --modes).")
    tasks = []
    for spec in args.tasks:
        suite = load_suite(spec, args.scorer)
        tasks.extend(suite[: args.limit] if args.limit else suite)
    user_options, assistant_options = provider_options(args, "user"), provider_options(args, "assistant")
    if "simulated" in modes:  # two vllm: engines on CPUs run side by side, as in simulate
        user_options, assistant_options = side_by_side(args, user_options, assistant_options)
    assistant = chat_model(args.assistant, assistant_options)
    user = user_model(args.user, user_options) if "simulated" in modes else None
    extractor = chat_model(args.extractor, assistant_options) if args.extractor else None  # the assistant's engine where it is the same model
    rephrase = chat_model(args.rephrase, assistant_options) if args.rephrase else None
    settings = EvalSettings(modes=modes, samples=args.samples, max_turns=args.max_turns, seed=args.seed,
                            concurrency=args.concurrency, guardrails=guardrails_from(args), faults=faults_from(args))
    report = run_async(evaluate(tasks, assistant, args.out, user_model=user, extractor=extractor, rephrase=rephrase,
                                  settings=settings, progress=not args.no_progress))
    from ..evaluation.assistants.evaluate import markdown

    print(markdown(report))
    print(f"wrote {args.out}/assistant.json, assistant.md and transcripts/", file=sys.stderr)
    return 0
