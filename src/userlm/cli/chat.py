"""``userlm chat``: you play the assistant while a user model plays the user.

    userlm chat --user hf:microsoft/UserLM-8b --intent "You want help planning a trip to Lisbon."

Type each assistant reply and press Enter; ``/quit`` (or Ctrl-D) stops. With ``--out`` the
conversation is appended to a JSONL file in the simulation record format.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_guardrail_options, add_model_options, guardrails_from, provider_options


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("chat", help="play the assistant yourself against a user model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--intent", help="the task the simulated user pursues")
    p.add_argument("--intents", metavar="FILE", help="take the intent from this file (with --id)")
    p.add_argument("--id", help="intent id within --intents (default: the first)")
    p.add_argument("--max-turns", type=int, default=20, metavar="N", help="user turns at most (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user's sampling (default: 0)")
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
    from ..conversation import Conversation, ConversationWriter
    from ..models.registry import user_model
    from ..user import SimulatedUser, derive_seed

    intent = _intent(args)
    user = SimulatedUser(user_model(args.user, provider_options(args, "user")), guardrails_from(args))
    session = user.session(intent.text, seed=derive_seed(args.seed, intent.id))
    conv = Conversation(
        id=f"{intent.id}#chat", intent_id=intent.id, intent=intent.text, metadata=dict(intent.metadata),
        user_model=user.name, assistant_model="human", seed=session.seed,
    )
    print(f"intent: {intent.text}\n(type the assistant's replies; /quit, Ctrl-D or Ctrl-C to stop)\n", file=sys.stderr)
    try:
        _converse(session, conv, args.max_turns)
    except KeyboardInterrupt:
        conv.end_reason, conv.error = "assistant_quit", None
        print("", file=sys.stderr)
    conv.messages = list(session.messages)
    conv.usage = {"user": session.usage}
    if args.out:
        with ConversationWriter(args.out) as writer:
            writer.write(conv)
        print(f"saved to {args.out} ({conv.end_reason})", file=sys.stderr)
    return 0


def _converse(session, conv, max_turns: int) -> None:
    """Turn after turn until the user ends, the limit, or the person stops; ``conv.end_reason`` says which."""
    from ..render import END_OF_CONVERSATION

    reply = None
    conv.end_reason = "max_turns"
    for _ in range(max_turns):
        text = session.step(reply)
        turn = session.last
        if turn and turn.rejected:
            notes = ", ".join(r.reason for r in turn.rejected)
            print(f"  [guardrails refused {len(turn.rejected)} draft(s): {notes}]", file=sys.stderr)
        if text is None:
            ended = bool(turn and turn.ended)
            conv.end_reason = (turn.end_reason if turn else None) or "guardrail_exhausted"
            print(f"user> {END_OF_CONVERSATION}" if ended else "user> (every draft was refused)")
            return
        print(f"user> {text}")
        try:
            reply = input("assistant> ")
        except EOFError:
            reply = "/quit"
        if reply.strip() == "/quit":
            conv.end_reason = "assistant_quit"
            return
