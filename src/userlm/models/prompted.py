"""A general chat model prompted to play the user (the baseline the UserLM paper compares against)."""

from __future__ import annotations

from ..render import END_OF_CONVERSATION, prompted_user_view
from .base import ChatModel, UserDraft, UserTurnRequest, close, forget_conversations, join_lockstep
from .lockstep import Lockstep


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
        return prompted_user_view(request.intent, request.messages, allow_end=request.allow_end)

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
