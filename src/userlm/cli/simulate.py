"""``userlm simulate``: conversations between a user model and an assistant, for every intent.

    userlm simulate --intents intents.jsonl --user hf:microsoft/UserLM-8b \\
        --assistant openai:gpt-4o-mini --out runs/demo.jsonl --samples 3 --max-turns 6
"""

from __future__ import annotations

import argparse
import sys

from .options import COUNT, add_guardrail_options, add_model_options, faults_from, guardrails_from, provider_options, side_by_side
from .stopping import run_async


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("simulate", help="simulate conversations between a user model and an assistant", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--intents", required=True, metavar="FILE", help="JSONL of {id, intent, ...} or text with one intent per line")
    p.add_argument("--out", required=True, metavar="FILE", help="JSONL to append conversations to (re-running resumes it)")
    p.add_argument("--samples", type=COUNT, default=1, metavar="N", help="conversations per intent (default: 1)")
    p.add_argument("--max-turns", type=COUNT, default=6, metavar="N", help="user turns per conversation at most (default: 6)")
    p.add_argument("--seed", type=int, default=0, help="run seed: same seed and local models give the same transcripts")
    p.add_argument("--concurrency", type=COUNT, default=64, metavar="N", help="conversations in flight (default: 64)")
    p.add_argument("--retry-errors", action="store_true", help="redo conversations that ended with an error")
    p.add_argument("--extend", action="store_true",
                   help="resume a file made with another --samples or other intents, adding to it (the per-conversation settings must still match)")
    p.add_argument("--token-budget", type=COUNT, metavar="N",
                   help="start no conversation once the output's conversations have used N tokens, both sides, earlier runs "
                        "included (those in flight finish); the same command with a larger budget goes on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_options(p)
    add_guardrail_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:

    from ..intents import IntentFile
    from ..models.registry import chat_model, user_model
    from ..simulation import RunSettings, simulate_async
    from ..user import SimulatedUser

    settings = RunSettings(
        samples=args.samples, max_turns=args.max_turns, seed=args.seed, concurrency=args.concurrency,
        retry_errors=args.retry_errors, extend=args.extend,
    )
    intents = IntentFile(args.intents)  # read as the run goes, not held
    guardrails = guardrails_from(args)
    user_options, assistant_options = side_by_side(args, provider_options(args, "user"), provider_options(args, "assistant"))
    user = SimulatedUser(user_model(args.user, user_options), guardrails, faults_from(args))
    assistant = chat_model(args.assistant, assistant_options)
    if "vllm:" in (args.user[:5], args.assistant[:5]):
        from ..models.vllm.engine import CPU_NOTICE, on_cpu

        if on_cpu() and user_options.vllm.cpus is None and assistant_options.vllm.cpus is None:  # not side by side
            print(CPU_NOTICE, file=sys.stderr)
    summary = run_async(
        simulate_async(
            intents, user, assistant, out=args.out, settings=settings,
            progress=not args.no_progress, keep=False, token_budget=args.token_budget,
        )
    )
    return report_run(args.out, summary)


def report_run(out: str, summary) -> int:
    """The end-of-run lines: what was written, how conversations ended, and what failed (exit 1
    when every conversation of this run failed)."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.end_reasons.items())) or "none"
    print(
        f"{out}: {summary.written} conversations written, {summary.skipped} already there "
        f"({summary.total} in all); end reasons this run: {reasons}",
        file=sys.stderr,
    )
    failed = sum(summary.errors.values())
    if failed:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary.errors.items()))
        print(f"{failed} of {summary.written} conversations failed: {kinds}. First: {summary.first_error}", file=sys.stderr)
        print("Fix the cause, then run the same command with --retry-errors to redo them.", file=sys.stderr)
    if summary.unfinished:
        print(f"{summary.unfinished} conversations were stopped because a server could not be reached or kept timing out "
              f"(first: {summary.first_unfinished}); they are not recorded: run the same command again to finish them.",
              file=sys.stderr)
    if summary.reasked:
        print(f"{summary.reasked} turns were asked again of another replica after theirs failed.", file=sys.stderr)
    print(token_line(summary), file=sys.stderr)
    if summary.not_started:
        print(f"--token-budget {summary.token_budget} is spent ({summary.tokens_in_all:,} tokens in all): {summary.not_started} "
              "conversations were not started; run the same command with a larger --token-budget to go on.", file=sys.stderr)
    return 1 if summary.unfinished or summary.not_started or (summary.written and failed == summary.written) else 0


def token_line(summary) -> str:
    """The run's tokens by side (prompt + completion), and in all with the output's earlier conversations."""
    sides = "; ".join(f"{side} {u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion"
                      for side, u in sorted(summary.tokens.items())) or "none"
    return f"tokens this run: {sides}; {summary.tokens_in_all:,} in all in the output"
