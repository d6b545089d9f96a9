"""Entry point of the ``userlm`` command: ``userlm --help`` lists the commands."""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import signal
import sys
import threading
from typing import NoReturn, cast

from ..errors import UserError
from . import chat, demo, eval_assistant, eval_user, intents, prepare, report, serve, show, simulate, train, train_detector
from .stopping import Interrupted, exit_interrupted


class _Parser(argparse.ArgumentParser):
    """argparse, with errors a newcomer can act on: a bad value or a missing flag is one line that
    points at the command's ``--help``; a flag the command does not have is its usage and the
    nearest flag it does have."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def unknown(self, extra: list[str]) -> NoReturn:
        flag = next((a for a in extra if a.startswith("-")), extra[0]).split("=", 1)[0]
        known = [s.removeprefix("--") for action in self._actions for s in action.option_strings if s.startswith("--")]
        near = difflib.get_close_matches(flag.lstrip("-"), known, n=1, cutoff=0.7)
        self.print_usage(sys.stderr)
        hint = f"; did you mean --{near[0]}?" if near else ""
        self.exit(2, f"{self.prog}: error: unrecognized argument {' '.join(extra)}{hint} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="userlm", description="Simulate, train and evaluate user language models.")
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
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command that was given them, not by the top level
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        cast(_Parser, commands.choices[args.command]).unknown(extra)
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
