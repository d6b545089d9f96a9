"""The two small interfaces every model plugs in through.

A *user model* writes drafts of the simulated user's next turn; a *chat model* answers as the
assistant. Local checkpoints, HTTP servers, Python functions and scripted test doubles all
implement one of these, and the simulation only ever talks to these interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingSettings:
    """How a model samples."""

    temperature: float = 1.0  #: 0 means greedy
    top_p: float = 0.8
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError("sampling needs temperature >= 0, top_p in (0, 1] and max_new_tokens >= 1")


@dataclass
class UserTurnRequest:
    """Everything a user model needs to draft the next user turn."""

    intent: str | None
    messages: list[dict[str, str]]  #: the conversation so far, roles "user"/"assistant"
    seed: int  #: differs per conversation, turn and attempt
    allow_end: bool  #: whether <|endconversation|> may be produced
    attempt: int = 0  #: how many drafts of this turn were refused already
    conversation_key: str | None = None  #: stable per conversation (lets local models reuse its cache)
    banned_first_words: tuple[str, ...] = ()
    end_threshold: float | None = None  #: end when P(end) at the start of the turn reaches this


@dataclass
class UserDraft:
    """One draft of a user turn."""

    text: str
    ended: bool = False  #: the model ended the conversation instead of writing a turn
    end_prob: float | None = None  #: P(<|endconversation|>) at the start of the turn, when known
    prompt_tokens: int = 0
    completion_tokens: int = 0
    notes: dict = field(default_factory=dict)


@dataclass
class ChatReply:
    """An assistant reply."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class UserModel(Protocol):
    """Drafts user turns. Implementations may batch concurrent calls."""

    name: str

    async def draft(self, request: UserTurnRequest) -> UserDraft: ...


@runtime_checkable
class ChatModel(Protocol):
    """Answers as the assistant (or as the judge, or as a prompted user)."""

    name: str

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None) -> ChatReply: ...
