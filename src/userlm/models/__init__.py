"""Model providers: local checkpoints, OpenAI-compatible servers, Python functions, scripted doubles."""

from .base import ChatModel, ChatReply, SamplingSettings, UserDraft, UserModel, UserTurnRequest

__all__ = ["ChatModel", "ChatReply", "SamplingSettings", "UserDraft", "UserModel", "UserTurnRequest"]
