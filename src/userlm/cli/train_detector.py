"""``userlm train-detector``: train the local naturalness detector from labelled text.

    userlm train-detector --human real_user_turns.jsonl --machine simulated.jsonl --out detector/
    userlm eval-user ... --detector local:detector/

Inputs are conversation records (their user turns are used), JSONL strings or ``{"text"}``
objects, or plain text with one text per line. Prints the accuracy on a held-out fifth.
"""

from __future__ import annotations

import argparse
import sys


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("train-detector", help="train the local human-vs-machine text detector", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--human", action="append", required=True, metavar="FILE", help="human-written texts (repeatable)")
    p.add_argument("--machine", action="append", required=True, metavar="FILE", help="machine-written texts (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the trained detector")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default: 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.simulators.detectors import read_texts, train_detector

    human = [t for f in args.human for t in read_texts(f)]
    machine = [t for f in args.machine for t in read_texts(f)]
    report = train_detector(human, machine, args.out, seed=args.seed)
    print(f"trained on {report.train_size} texts; held-out accuracy {report.accuracy:.3f} on {report.test_size} "
          f"(mean human-likelihood: human {report.human_mean_on_test:.2f}, machine {report.machine_mean_on_test:.2f})")
    print(f"wrote {args.out}/detector.joblib; use --detector local:{args.out}", file=sys.stderr)
    return 0
