"""``userlm prepare``: chat logs in, filtered conversation records split by user out.

    userlm prepare wildchat.jsonl --out prepared/
    userlm prepare oasst --out prepared/                      # the Open-Assistant trees that ship with userlm
    userlm prepare allenai/WildChat-1M --out prepared/       # a hub dataset, where a network is available

Writes ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``report.json`` (how many
conversations each step removed), and prints the report.
"""

from __future__ import annotations

import argparse
import sys

from ..prepare.ingest import FORMATS


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("prepare", help="ingest chat logs, filter them and split them by user", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help=".json/.jsonl/.parquet files, hub dataset names, or oasst (the Open-Assistant trees that ship with userlm)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for train.jsonl, validation.jsonl, test.jsonl and report.json")
    p.add_argument("--format", default="auto", choices=FORMATS, help="the chat-log format (default: auto, recognised row by row)")
    p.add_argument("--hub-split", default="train", help="split of a hub dataset to read (default: train)")
    p.add_argument("--languages", default="en,english", help="languages to keep, comma-separated ('' keeps all)")
    p.add_argument("--keep-toxic", action="store_true", help="keep conversations the source flags as toxic")
    p.add_argument("--keep-redacted", action="store_true", help="keep conversations with redacted personal data")
    p.add_argument("--max-turn-chars", type=int, default=16000, help="drop conversations with a longer turn (0: no limit)")
    p.add_argument("--min-user-turns", type=int, default=1, metavar="N", help="drop conversations with fewer user turns (default: 1)")
    p.add_argument("--max-user-turns", type=int, metavar="N", help="drop conversations with more user turns (default: no limit)")
    p.add_argument("--dedup-threshold", type=float, default=0.8, help="MinHash Jaccard threshold (0: no dedup)")
    p.add_argument("--dedup-on", choices=["all", "user"], default="all", help="compare whole conversations or only their user turns when removing near-duplicates (default: all)")
    p.add_argument("--split", default="0.9,0.05,0.05", help="train,validation,test fractions by user")
    p.add_argument("--seed", type=int, default=0, help="seed of the split by user (default: 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data import conversations_source
    from ..errors import UserError
    from ..prepare.filters import FilterConfig, filter_and_split, save_prepared
    from ..prepare.ingest import IngestStats, conversations_from

    try:
        split = tuple(float(x) for x in args.split.split(","))
        assert len(split) == 3 and abs(sum(split) - 1) < 1e-6 and min(split) >= 0
    except (ValueError, AssertionError):
        raise UserError(f"--split {args.split!r}: give three fractions that add up to 1, e.g. 0.9,0.05,0.05.") from None
    languages = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    config = FilterConfig(
        languages=languages or None, drop_toxic=not args.keep_toxic, drop_redacted=not args.keep_redacted,
        max_turn_chars=args.max_turn_chars or None, min_user_turns=args.min_user_turns, max_user_turns=args.max_user_turns,
        dedup_threshold=args.dedup_threshold or None, dedup_on=args.dedup_on, split=split, seed=args.seed,
    )
    stats = IngestStats()
    convs: list = []
    for source in args.sources:
        convs.extend(conversations_from(conversations_source(source), fmt=args.format, split=args.hub_split, oasst_languages=languages, stats=stats))
    splits, report = filter_and_split(convs, config)
    out = Path(args.out)
    save_prepared(out, splits, report, list(args.sources), stats.rows, stats.dropped_messages)
    print(report.table())
    if report.dedup_method:
        print(f"near-duplicates: {report.dedup_method}")
    print(f"wrote {out}/train.jsonl, validation.jsonl, test.jsonl and report.json", file=sys.stderr)
    return 0
