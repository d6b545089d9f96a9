"""``userlm eval-user``: how human-like user simulators are, side by side.

    userlm eval-user --user hf:DIR --user prompted:openai:gpt-4o-mini \\
        --data held_out.jsonl --judge openai:gpt-4o --out eval/

Measures, per simulator: perplexity of real held-out user turns with and without the intent
(local models), first-turn diversity and distinct-1/2, intent decomposition, dialogue
termination (threshold curve, best F1 and its threshold), naturalness (``--detector``), role
adherence and intent adherence. Writes ``eval/user_eval.json`` (every figure, per-item results,
bootstrap 95% intervals) and ``eval/user_eval.md``; running it again resumes.

``--data`` takes a conversation file (JSONL records, WildChat/ShareGPT/OpenAI/Open-Assistant/
PRISM rows), a hub dataset (``owner/name[:config]``), or ``wildchat`` / ``prism`` for the
public sets the paper used.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_guardrail_options, add_model_options, guardrails_from, provider_options
from .stopping import run_async

HUB_DATA = {"wildchat": "allenai/WildChat-1M", "prism": "HannahRoseKirk/prism-alignment:conversations"}


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval-user", help="evaluate user simulators: alignment and the intrinsic metrics", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="SOURCE", help="held-out real conversations: a file, owner/name[:config], wildchat or prism (from the hub), "
                   "oasst (100 Open-Assistant trees that ship with userlm) or simulator-arena (51 real people's document-writing "
                   "conversations with their intents, which ship with userlm; a path reads either SimulatorArena annotation file)")
    p.add_argument("--data-split", default="train", metavar="SPLIT", help="split of a hub dataset (default: train)")
    p.add_argument("--limit", type=int, default=500, metavar="N", help="held-out conversations to use (default: 500)")
    p.add_argument("--intents", metavar="FILE", help="intents for the simulated conversations (default: the data's intents, else a built-in set)")
    p.add_argument("--first-turns", type=int, default=100, metavar="N", help="simulated conversations, one per intent (default: 100)")
    p.add_argument("--max-turns", type=int, default=3, metavar="N", help="user turns per simulated conversation (default: 3)")
    p.add_argument("--judge", metavar="SPEC", help="chat model that judges intent and role adherence (and naturalness with --detector judge)")
    p.add_argument("--judge-base-url", metavar="URL", help="OpenAI-compatible server of the judge (default: OPENAI_BASE_URL)")
    p.add_argument("--detector", metavar="SPEC", help="naturalness detector: http:URL, judge or local:DIR (see `userlm train-detector`)")
    p.add_argument("--questions", action="append", metavar="SET", help="role-adherence questions: fixture:mcq, fixture:open, commonsense_qa, "
                   "natural_questions or a JSONL file (repeatable; default: both fixtures)")
    p.add_argument("--scenario-limit", type=int, default=50, metavar="N", help="questions and intents per scenario (default: 50)")
    p.add_argument("--scenario-assistant", metavar="SPEC", help="chat model told to hedge / divert in the scenarios (default: scripted replies)")
    p.add_argument("--parts", metavar="P,P",
                   help="comma-separated parts out of alignment, termination, conversations, naturalness, role, intent, replay "
                        "(default: all; replay when the held-out conversations carry intents, as SimulatorArena's files do)")
    p.add_argument("--replay-drafts", type=int, default=3, metavar="N",
                   help="replay: drafts of the next turn at each point a person spoke (default: 3; 2 or more give the simulator-vs-itself control)")
    p.add_argument("--end-samples", type=int, default=4, metavar="K", help="drafts per point for simulators without probabilities (default: 4)")
    p.add_argument("--published", metavar="FILE", help="published figures to show alongside (JSON, same shape as the built-in file)")
    p.add_argument("--resamples", type=int, default=1000, metavar="N", help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    p.add_argument("--concurrency", type=int, default=32, metavar="N", help="conversations and requests in flight (default: 32)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for user_eval.json, user_eval.md, parts and transcripts (re-running resumes it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_options(p, many_users=True, assistant_required=False)
    add_guardrail_options(p)
    p.set_defaults(run=run)


def _source(data: str) -> str:
    """What ``--data`` names: a built-in set, a public hub set the paper used, or a file / hub name as given."""
    from ..data import conversations_source

    return conversations_source(HUB_DATA.get(data, data))


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..errors import UserError
    from ..evaluation.simulators.detectors import detector as make_detector
    from ..evaluation.simulators.evaluate import default_parts, evaluate_users, held_out_conversations, intents_to_simulate
    from ..evaluation.simulators.judge import CachedJudge
    from ..evaluation.simulators.parts import PARTS, Simulator, UserEvalSettings
    from ..evaluation.simulators.table import markdown
    from ..evaluation.tables import published_rows
    from ..models.base import SamplingSettings
    from ..models.registry import chat_model, user_model

    parts = tuple(x.strip() for x in (args.parts or ",".join(PARTS)).split(",") if x.strip())
    if not parts or any(x not in PARTS for x in parts):
        raise UserError(f"unknown part(s) in --parts {args.parts!r}; use some of {', '.join(PARTS)}.")
    if args.replay_drafts < 1:
        raise UserError("--replay-drafts must be at least 1.")
    data = held_out_conversations(_source(args.data), args.data_split, args.limit)
    if not data:
        raise UserError(f"{args.data}: no conversations with an assistant reply; give held-out chat logs.")
    if args.parts is None:
        parts = default_parts(data)
    intents = intents_to_simulate(args.intents, data, args.first_turns)
    questions = []
    from ..evaluation.simulators.scenarios import load_questions

    for spec in args.questions or ["fixture:mcq", "fixture:open"]:
        questions.extend(load_questions(spec, limit=args.scenario_limit))
    simulators = [Simulator(spec, user_model(spec, provider_options(args, "user"))) for spec in dict.fromkeys(args.user)]
    assistant = chat_model(args.assistant, provider_options(args, "assistant")) if args.assistant else None
    judge_options = replace(provider_options(args, "assistant"), sampling=SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=256))
    judge_options = replace(judge_options, endpoint=replace(judge_options.endpoint, base_url=args.judge_base_url, flag="--judge-base-url"))
    judge = CachedJudge(chat_model(args.judge, judge_options), f"{args.out}/judge_cache.jsonl") if args.judge else None
    detector = make_detector(args.detector, judge) if args.detector else None
    scenario_assistant = chat_model(args.scenario_assistant, provider_options(args, "assistant")) if args.scenario_assistant else None
    settings = UserEvalSettings(parts=parts, max_turns=args.max_turns, scenario_limit=args.scenario_limit, end_samples=args.end_samples,
                                replay_drafts=args.replay_drafts,
                                seed=args.seed, concurrency=args.concurrency, resamples=args.resamples, guardrails=guardrails_from(args))
    published = published_rows(args.published) if args.published else None
    report = run_async(evaluate_users(
        simulators, data, intents, args.out, assistant=assistant, judge=judge, detector=detector, questions=questions,
        scenario_assistant=scenario_assistant, settings=settings, published=published, progress=not args.no_progress,
        log=lambda m: print(m, file=sys.stderr),
    ))
    print(markdown(report))
    print(f"wrote {args.out}/user_eval.json and user_eval.md", file=sys.stderr)
    return 0
