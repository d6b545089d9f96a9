"""A general chat model prompted to play the user (the baseline the UserLM paper compares against)."""

from __future__ import annotations

from ..prompts import load_prompt
from ..render import END_OF_CONVERSATION, flipped_view
from .base import ChatModel, UserDraft, UserTurnRequest, close, forget_conversations, join_lockstep
from .lockstep import Lockstep

_MAY_END = (
    f"- When your goal is met, or you would give up in real life, reply with exactly {END_OF_CONVERSATION} "
    "and nothing else to end the conversation."
)
_MAY_NOT_END = "- Keep the conversation going: always write a message."


def prompted_messages(intent: str | None, messages: list[dict[str, str]], *, allow_end: bool) -> list[dict[str, str]]:
    """The chat a prompted user model sees: the role-play system prompt with the intent, then the
    conversation with roles flipped (opened by a fixed first message when the user speaks first)."""
    system = load_prompt("prompted_user.txt").replace("{intent}", intent or "Chat about whatever you like.")
    system = system.replace("{ending}", _MAY_END if allow_end else _MAY_NOT_END)
    flipped = flipped_view(messages)
    if not flipped or flipped[0]["role"] != "user":
        flipped = [{"role": "user", "content": load_prompt("prompted_user_start.txt").strip()}] + flipped
    return [{"role": "system", "content": system}] + flipped


class PromptedUser:
    """Turns any :class:`ChatModel` into a user model: the intent goes into a role-play system
    prompt and the conversation is shown with roles flipped, so the chat model writes the user's
    turns as its own replies."""

    def __init__(self, chat: ChatModel):
        self.chat = chat
        self.name = f"prompted:{chat.name}"

    async def aclose(self) -> None:
        await close(self.chat)

    def forget_conversations(self) -> None:
        forget_conversations(self.chat)

    def join_lockstep(self, lockstep: Lockstep | None) -> None:
        join_lockstep(self.chat, lockstep)

    def messages_for(self, request: UserTurnRequest) -> list[dict[str, str]]:
        return prompted_messages(request.intent, request.messages, allow_end=request.allow_end)

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        reply = await self.chat.reply(self.messages_for(request), seed=request.seed)
        text = reply.text.strip()
        ended = text == END_OF_CONVERSATION
        return UserDraft(
            text="" if ended else text,
            ended=ended,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
        )
