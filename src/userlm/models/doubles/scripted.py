"""Scripted models that replay given turns: test doubles and demos that plug in like any model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ...errors import UserError
from ...render import END_OF_CONVERSATION
from ..base import ChatReply, UserDraft, UserTurnRequest
from ..handle import ConversationHandle


class ScriptedUser:
    """Replays user turns in order; the conversation ends when the script runs out.

    Each entry is a turn, or a list of drafts tried one per attempt (the last one repeats), so
    a script can show the guardrails refusing drafts. ``<|endconversation|>`` as an entry ends
    the conversation there.
    """

    def __init__(self, turns: Sequence[str | Sequence[str]], name: str = "scripted"):
        self.turns = [[t] if isinstance(t, str) else list(t) for t in turns]
        self.name = name

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        index = sum(1 for m in request.messages if m["role"] == "user")
        if index >= len(self.turns):
            return UserDraft(text="", ended=True)
        options = self.turns[index]
        text = options[min(request.attempt, len(options) - 1)]
        if text.strip() == END_OF_CONVERSATION:
            return UserDraft(text="", ended=True)
        return UserDraft(text=text, completion_tokens=len(text.split()))


class ScriptedAssistant:
    """Replays assistant replies in order, starting over when they run out."""

    def __init__(self, replies: Sequence[str], name: str = "scripted"):
        if not replies:
            raise ValueError("a scripted assistant needs at least one reply")
        self.replies = list(replies)
        self.name = name

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        index = sum(1 for m in messages if m["role"] == "assistant")
        text = self.replies[index % len(self.replies)]
        return ChatReply(text=text, completion_tokens=len(text.split()))


def load_script(path: str) -> list:
    """Read a script: a JSON list of turns, or a text file with one turn per line."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{path}: no such script file; give a JSON list of turns or a text file with one turn per line.")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            turns = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); give a JSON list of turns.") from None
        if not isinstance(turns, list) or not turns or not all(
                isinstance(t, str) or (isinstance(t, list) and t and all(isinstance(d, str) for d in t)) for t in turns):
            found = type(turns).__name__ if not isinstance(turns, list) else "a list with other things in it"
            raise UserError(f"{path}: expected a JSON list of turns (each a string, or a list of strings tried in turn), "
                            f"not {found}.")
        return turns
    turns = [line for line in text.splitlines() if line.strip()]
    if not turns:
        raise UserError(f"{path}: the script is empty; write one turn per line.")
    return turns
