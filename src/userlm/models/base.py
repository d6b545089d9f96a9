"""The two small interfaces every model plugs in through.

A *user model* writes drafts of the simulated user's next turn; a *chat model* answers as the
assistant. Local checkpoints, HTTP servers, Python functions and scripted test doubles all
implement one of these, and the simulation only ever talks to these interfaces.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .handle import ConversationHandle

if TYPE_CHECKING:
    from .lockstep import Lockstep


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
    #: the conversation this turn belongs to: engines route on its id, key their caches on it and keep its token ids in it
    conversation: ConversationHandle | None = None
    banned_first_words: tuple[str, ...] = ()
    end_threshold: float | None = None  #: end when P(end) at the start of the turn reaches this
    #: this turn's own sampling (temperature, top_p, token cap), for models that honour it per
    #: request (``samples_per_request``); None: the model's own settings
    sampling: SamplingSettings | None = None

    # The one end policy every user model obeys: with a threshold, P(end) decides and the end
    # token is never sampled; without one, the end token is sampled like any other; either only
    # where ending is allowed.

    @property
    def conversation_key(self) -> str | None:
        """The conversation's id (None: a request that belongs to no conversation kept between turns)."""
        return self.conversation.id if self.conversation is not None else None

    @property
    def ending_threshold(self) -> float | None:
        """The P(end) at a turn's start at which the turn ends the conversation instead of being
        written; None when no threshold decides (or ending is not allowed)."""
        return self.end_threshold if self.allow_end else None

    @property
    def end_may_be_sampled(self) -> bool:
        """Whether the end token may be sampled: ending is allowed and no threshold decides instead."""
        return self.allow_end and self.end_threshold is None


@dataclass
class UserDraft:
    """One draft of a user turn."""

    text: str
    ended: bool = False  #: the model ended the conversation instead of writing a turn
    end_prob: float | None = None  #: P(<|endconversation|>) at the start of the turn, when known
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: bool = False  #: the token budget ran out before the turn ended
    #: P(end) is known only to be below this (the end token was outside the server's top log-probabilities)
    end_prob_below: float | None = None
    closed_by_end: bool = False  #: an end token after some text closed the turn (the text is kept, the conversation goes on)


class ContextOverflow(Exception):
    """A prompt too long for the model's context: that turn cannot be written (the conversation
    ends with an error; the others go on)."""


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
    """Answers as the assistant (or as the judge, or as a prompted user). ``conversation`` is the
    handle of the conversation a reply belongs to (None for one-off prompts such as a judge's);
    a chat model may leave the keyword out of its ``reply``, and is then called without it
    (:func:`reply_in`)."""

    name: str

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply: ...


# Optional abilities: a model has one when it has the method or attribute; the runner and the
# evaluations check them with isinstance and never probe attributes by name.


@runtime_checkable
class ForgetsConversations(Protocol):
    """Keeps per-conversation state (key/value caches, sampled ids, routes) that a new run
    drops, so that a seed reproduces a run in any process."""

    def forget_conversations(self) -> None: ...


@runtime_checkable
class BatchesInLockstep(Protocol):
    """Batches concurrent requests itself, on this machine: a run hands it the run's
    :class:`~userlm.models.lockstep.Lockstep`, so its batches fall the same way on every run
    (None at the run's end: batch freely again)."""

    def join_lockstep(self, lockstep: Lockstep | None) -> None: ...


@runtime_checkable
class Closable(Protocol):
    """Holds connections or processes to release when a run is done."""

    async def aclose(self) -> None: ...


@runtime_checkable
class Reasks(Protocol):
    """Spread over several backends: counts the requests asked again elsewhere after a backend failed."""

    reasked: int


@runtime_checkable
class Scheduled(Protocol):
    """Says whether its answers come back in an order userlm does not fix (over the network, or
    from an engine with a scheduler of its own), through ``remote``."""

    remote: bool


@runtime_checkable
class ProbesEnd(Protocol):
    """Gives P(end) at a turn's start from a served model's log-probabilities, for a prompt (the
    user-model view as text, without the turn's opening), without drafting a turn."""

    async def end_probability(self, prompt: str, seed: int) -> float: ...


@runtime_checkable
class MapsShards(Protocol):
    """Replicas in processes of their own that run a function on their model, each on its share of the items."""

    def can_map(self) -> bool: ...

    async def map_shards(self, fn, items: list, **options) -> list: ...


@runtime_checkable
class HasWeights(Protocol):
    """A local causal LM whose weights and tokenizer are in this process (``loaded``)."""

    loaded: object


@runtime_checkable
class Samples(Protocol):
    """Samples with settings of its own (``sampling``): a run records them, so that resuming with
    other settings is caught whether the run came from the command line or from Python."""

    sampling: SamplingSettings


@runtime_checkable
class SamplesPerRequest(Protocol):
    """Honours a request's own sampling (:attr:`UserTurnRequest.sampling`: temperature, top_p
    and token cap) in place of its ``sampling``, row by row within a batch."""

    samples_per_request: bool


def request_sampling(request: UserTurnRequest, model: Samples) -> SamplingSettings:
    """The sampling a request's turn is drafted with: its own, else the model's."""
    return request.sampling if request.sampling is not None else model.sampling


@runtime_checkable
class WrapsChat(Protocol):
    """A user model that is a chat model prompted to play the user (``chat``)."""

    chat: ChatModel


def is_remote(model: object) -> bool:
    """Whether a model's answers come back in an order userlm does not fix, directly or through
    the chat model it wraps."""
    if isinstance(model, Scheduled) and model.remote:
        return True
    return isinstance(model, WrapsChat) and isinstance(model.chat, Scheduled) and bool(model.chat.remote)


async def close(model: object) -> None:
    """Release what ``model`` holds, when it holds anything."""
    if isinstance(model, Closable):
        await model.aclose()


def forget_conversations(model: object) -> None:
    """Drop ``model``'s per-conversation state, when it keeps any."""
    if isinstance(model, ForgetsConversations):
        model.forget_conversations()


def join_lockstep(model: object, lockstep: Lockstep | None) -> None:
    """Hand ``model`` a run's lockstep (None: the run is over), when it batches on this machine."""
    if isinstance(model, BatchesInLockstep):
        model.join_lockstep(lockstep)


def sampling_of(model: object) -> SamplingSettings | None:
    """How ``model`` samples, directly or through the chat model it wraps; None for a model
    that does not sample (a script, a Python function)."""
    if isinstance(model, Samples):
        return model.sampling
    return sampling_of(model.chat) if isinstance(model, WrapsChat) else None


def reply_in(model: ChatModel, messages: list[dict[str, str]], *, seed: int | None,
             conversation: ConversationHandle | None) -> Awaitable[ChatReply]:
    """``model``'s reply in ``conversation``: the handle goes to a ``reply`` that takes it."""
    if _takes_conversation(type(model)):
        return model.reply(messages, seed=seed, conversation=conversation)
    return model.reply(messages, seed=seed)


@functools.cache
def _takes_conversation(kind: type) -> bool:
    import inspect

    try:
        parameters = inspect.signature(kind.reply).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError, AttributeError):
        return False
    return "conversation" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def reasked(model: object) -> int:
    return model.reasked if isinstance(model, Reasks) else 0
