"""Entry point of the ``userlm`` command: ``userlm --help`` lists the commands."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading

from ..errors import UserError
from . import chat, demo, eval_assistant, eval_user, intents, prepare, report, serve, show, simulate, train, train_detector
from .stopping import Interrupted, exit_interrupted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="userlm", description="Simulate, train and evaluate user language models.")
    parser.add_argument("--version", action="version", version=f"userlm {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (simulate, chat, serve, show, report, prepare, intents, train, eval_assistant, eval_user, train_detector, demo):
        module.register(commands)
    for sub in commands.choices.values():  # the commands' descriptions are their module docs: plain text on a terminal
        sub.description = re.sub(r"``(.+?)``", r"\1", sub.description or "")
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="userlm: %(message)s")
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)  # a SIGTERM stops like Ctrl-C, and says so
    try:
        return args.run(args)
    except UserError as exc:
        print(f"userlm: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # threads may still be busy (a local batch, a hung assistant): leave without them
        exit_interrupted(str(exc))
        return 130  # not reached
    except KeyboardInterrupt:
        from tqdm import tqdm

        tqdm.write("userlm: interrupted; what finished is saved; run the same command again to go on.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
