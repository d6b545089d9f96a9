"""Model providers: local checkpoints, OpenAI-compatible servers, Python functions, scripted doubles."""

from .base import ChatModel, ChatReply, SamplingSettings, UserDraft, UserModel, UserTurnRequest
from .handle import ConversationHandle

__all__ = ["ChatModel", "ChatReply", "ConversationHandle", "SamplingSettings", "UserDraft", "UserModel", "UserTurnRequest"]
