"""``userlm report``: one self-contained HTML file to read runs and evaluation results.

    userlm report runs/demo.jsonl --out report.html
    userlm report runs/a.jsonl runs/b.jsonl eval/assistant.json --reference prepared/test.jsonl --out report.html

Conversation files (.jsonl) and evaluation results (.json) may be mixed; two runs of the same
intents are shown side by side. The file opens offline from disk: no server, nothing fetched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("report", help="write an HTML report with plots and a transcript browser", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="FILE", help="conversation .jsonl files and evaluation .json files")
    p.add_argument("--reference", metavar="FILE", help="real conversations (.jsonl) to compare words per user turn with")
    p.add_argument("--out", default="report.html", metavar="FILE", help="the HTML file to write (default: report.html)")
    p.add_argument("--title", default="userlm report", help="the page title (default: userlm report)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..reports.data import build
    from ..reports.html import write

    paths = [Path(p) for p in args.inputs]
    if Path(args.out).is_dir():
        raise UserError(f"{args.out} is a folder; --out takes the .html file to write, e.g. {Path(args.out) / 'report.html'}.")
    for p in paths:
        if p.is_dir():
            raise UserError(f"{p} is a folder; give conversation files (.jsonl) and evaluation results (.json).")
        if not p.is_file():
            raise UserError(f"{p}: no such file.")
    runs = [p for p in paths if p.suffix == ".jsonl"]
    evaluations = [p for p in paths if p.suffix == ".json"]
    other = [p for p in paths if p.suffix not in (".jsonl", ".json")]
    if other or not runs:
        raise UserError("give at least one conversation file (.jsonl) and, optionally, evaluation results (.json).")
    data = build(runs, evaluations, Path(args.reference) if args.reference else None)
    out = write(data, args.out, args.title)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MB, {len(data['conversations'])} conversations); open it in a browser", file=sys.stderr)
    return 0
