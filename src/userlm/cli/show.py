"""``userlm show``: read conversations as transcripts.

    userlm show runs/demo.jsonl --limit 3
    userlm show runs/demo.jsonl --id "vegan-lasagna#0"
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from ..conversation import Conversation, Message
from ..render import END_OF_CONVERSATION


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("show", help="print conversations as readable transcripts", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a JSONL file of conversations")
    p.add_argument("--id", action="append", help="only this conversation id (repeatable)")
    p.add_argument("--end-reason", help="only conversations that ended this way")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N conversations")
    p.add_argument("--width", type=int, default=100, help="wrap lines at this width (default: 100)")
    p.add_argument("--no-drafts", action="store_true", help="list refusal reasons only, not the refused drafts")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..conversation import iter_conversations
    from ..errors import UserError

    shown = 0
    for conv in iter_conversations(args.file):
        if args.id and conv.id not in args.id:
            continue
        if args.end_reason and conv.end_reason != args.end_reason:
            continue
        if args.limit is not None and shown >= args.limit:
            break
        sys.stdout.write(format_conversation(conv, width=args.width, drafts=not args.no_drafts) + "\n")
        shown += 1
    if shown == 0:
        raise UserError(f"{args.file}: no conversation matches; check --id/--end-reason.")
    return 0


def _notes(m: Message) -> str:
    parts = []
    if m.faults:
        parts.append("faults: " + ", ".join(m.faults))
    if m.rejected:
        parts.append(f"{len(m.rejected)} refused: " + ", ".join(r.reason for r in m.rejected))
    if m.end_prob is not None:
        parts.append(f"P(end)={m.end_prob:.3f}")
    elif m.end_prob_below is not None:
        parts.append(f"P(end)<{m.end_prob_below:.3g}")
    if m.truncated:
        parts.append("cut at the token budget")
    return f"  [{'; '.join(parts)}]" if parts else ""


def _drafts(m: Message, width: int) -> list[str]:
    """Each refused draft, with its reason (cut to two lines; the record holds it whole, or its first
    characters and its length)."""
    lines = []
    for r in m.rejected or []:
        shown = " ".join(r.draft.split()) or "(empty)"
        wrapped = textwrap.wrap(f"refused ({r.reason}): {shown}", width - 10) or [""]
        if len(wrapped) > 2 or r.length is not None:
            wrapped = wrapped[:2]
            wrapped[-1] += f" ... ({r.length or len(r.draft)} characters)"
        lines += [f"{'':<9}{w}" for w in wrapped]
    return lines


def format_conversation(conv: Conversation, width: int = 100, drafts: bool = True) -> str:
    """A plain-text transcript of one conversation, with the guardrails' notes and refused drafts."""
    rule = "=" * width
    lines = [rule, f"{conv.id}   ended: {conv.end_reason}   turns: {len(conv.user_turns())}"]
    lines.append(f"user model: {conv.user_model}   assistant: {conv.assistant_model}   seed: {conv.seed}")
    if conv.intent:
        lines += textwrap.wrap(f"intent: {conv.intent}", width, subsequent_indent="        ")
    lines.append("-" * width)
    for m in conv.messages:
        label = "USER " if m.role == "user" else "ASSIST"
        body = textwrap.wrap(m.content, width - 8) or [""]
        lines.append(f"{label:<7} {body[0]}")
        lines += [f"{'':<7} {b}" for b in body[1:]]
        if m.role == "user" and _notes(m):
            lines.append(f"{'':<7}{_notes(m)}")
            if drafts:
                lines += _drafts(m, width)
        for event in m.events or []:
            lines.append(f"{'':<7}  ({', '.join(f'{k}={v}' for k, v in event.model_dump(exclude_none=True).items())})")
    if conv.final_turn is not None:
        what = END_OF_CONVERSATION if conv.end_reason == "user_ended" else "(every draft refused)"
        lines.append(f"{'USER':<7} {what}{_notes(conv.final_turn)}")
        if drafts:
            lines += _drafts(conv.final_turn, width)
    if conv.error:
        lines.append(f"error: {conv.error}")
    return "\n".join(lines)
