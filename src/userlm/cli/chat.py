"""``userlm chat``: you play the assistant while a user model plays the user.

    userlm chat --user hf:microsoft/UserLM-8b --intent "You want help planning a trip to Lisbon."

Type each assistant reply and press Enter; ``/quit`` (or Ctrl-D) stops. With ``--out`` the
conversation is appended to a JSONL file in the simulation record format.
"""

from __future__ import annotations

import argparse
import sys

from ..models.handle import ConversationHandle
from .options import add_guardrail_options, add_model_options, faults_from, guardrails_from, provider_options


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("chat", help="play the assistant yourself against a user model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--intent", help="the task the simulated user pursues")
    p.add_argument("--intents", metavar="FILE", help="take the intent from this file (with --id)")
    p.add_argument("--id", help="intent id within --intents (default: the first)")
    p.add_argument("--max-turns", type=int, default=20, metavar="N", help="user turns at most (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="run seed, as simulate's: the same seed, intent and --sample give the "
                   "conversation simulate would start (default: 0)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="which sample of the intent to replay, as simulate "
                   "numbers them (default: 0)")
    p.add_argument("--out", metavar="FILE", help="append the conversation to this JSONL file")
    add_model_options(p, assistant=False)
    add_guardrail_options(p)
    p.set_defaults(run=run)


def _intent(args: argparse.Namespace):
    from ..errors import UserError
    from ..intents import Intent, load_intents

    if args.intent:
        return Intent(id="chat", text=args.intent)
    if not args.intents:
        raise UserError("give the simulated user a task with --intent TEXT or --intents FILE.")
    intents = load_intents(args.intents)
    if args.id is None:
        return intents[0]
    for intent in intents:
        if intent.id == args.id:
            return intent
    raise UserError(f"{args.intents}: no intent with id {args.id!r}.")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..conversation import ConversationWriter
    from ..models.registry import user_model
    from ..simulation import LoopHooks, converse, new_conversation
    from ..user import SimulatedUser

    intent = _intent(args)
    user = SimulatedUser(user_model(args.user, provider_options(args, "user")), guardrails_from(args), faults_from(args))
    # the same id and seed as `userlm simulate --seed S` gives sample N of this intent: the same user turns
    conv = new_conversation(intent, args.sample, user, _Person(), args.seed)
    print(f"intent: {intent.text}\n(type the assistant's replies; /quit, Ctrl-D or Ctrl-C to stop)\n", file=sys.stderr)
    # a loop of its own, not asyncio.run: asyncio.run's Ctrl-C handler only cancels at the next await,
    # while the person's Ctrl-C must stop the prompt they are typing at
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(converse(conv, user, _Person(), args.max_turns, LoopHooks(on_user_turn=_show)))
    except KeyboardInterrupt:
        conv.end_reason, conv.error = "assistant_quit", None
        print("", file=sys.stderr)
    finally:
        loop.close()
    if args.out:
        with ConversationWriter(args.out) as writer:
            writer.write(conv)
        print(f"saved to {args.out} ({conv.end_reason})", file=sys.stderr)
    return 0


class _Person:
    """The assistant's side typed by the person at the terminal."""

    name = "human"

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None):
        from ..models.base import ChatReply
        from ..simulation import AssistantQuit

        try:
            # blocking on purpose: nothing else runs while the person types, and a Ctrl-C must reach
            # this (main) thread rather than leave a thread blocked on the terminal
            text = input("assistant> ")  # noqa: ASYNC250
        except EOFError:
            text = "/quit"
        if text.strip() == "/quit":
            raise AssistantQuit
        return ChatReply(text=text)


def _show(conv, turn) -> None:
    """Each user turn as the person sees it, with the drafts the guardrails refused and the faults it shows."""
    from ..render import END_OF_CONVERSATION

    if turn.rejected:
        notes = ", ".join(r.reason for r in turn.rejected)
        print(f"  [guardrails refused {len(turn.rejected)} draft(s): {notes}]", file=sys.stderr)
    if turn.text is not None:
        print(f"user> {turn.text}", flush=True)
    else:
        print(f"user> {END_OF_CONVERSATION}" if turn.ended else "user> (every draft was refused)", flush=True)
    if turn.faults:
        print(f"  [faults: {', '.join(turn.faults)}]", file=sys.stderr)
