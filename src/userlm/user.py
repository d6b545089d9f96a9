"""The simulated user: a user model under the guardrails, one turn at a time.

Embed it in your own evaluation loop::

    user = userlm.load_user("hf:microsoft/UserLM-8b")
    chat = user.session("You want a vegan lasagna recipe that takes under an hour.", seed=0)
    text = chat.step()                      # the first user turn
    while text is not None:
        text = chat.step(my_assistant(chat.messages))   # None once the user ends
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .conversation import Message, Rejection, Usage
from .errors import ConfigurationError
from .faults import FAULTS, TurnContext, detect, judge_prompt, judge_verdict
from .guardrails import GuardrailConfig, check_draft
from .models.base import ChatModel, SamplesPerRequest, SamplingSettings, UserModel, UserTurnRequest
from .models.handle import ConversationHandle, handle_of
from .render import END_OF_CONVERSATION


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (run seed, conversation id, turn, attempt, ...)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


@dataclass
class UserTurn:
    """The outcome of asking for the next user turn."""

    text: str | None  #: the kept utterance; None when the user ended or the guardrails gave up
    ended: bool = False  #: the user ended the conversation
    exhausted: bool = False  #: every draft was refused
    end_prob: float | None = None
    end_prob_below: float | None = None  #: P(end) is known only to be below this (see UserDraft)
    truncated: bool = False  #: the kept draft ran out of tokens before it ended
    rejected: list[Rejection] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    judged: Usage = field(default_factory=Usage)  #: the fault judge's tokens for this turn (``--fault-judge``)
    faults: list[str] | None = field(default_factory=list)  #: the faults the kept turn (or the end) shows (userlm.faults); None: not checked

    @property
    def end_reason(self) -> Literal["user_ended", "guardrail_exhausted"] | None:
        """How the conversation ended at this turn (a record's ``end_reason``), or None when it goes on."""
        if self.ended:
            return "user_ended"
        return "guardrail_exhausted" if self.exhausted else None

    def final_message(self) -> Message:
        """The record of a turn that ended the conversation: the end token when the user ended
        it, nothing when every draft was refused, with the guardrails' notes."""
        final = self.message()
        final.content = END_OF_CONVERSATION if self.ended else ""
        return final

    @property
    def attempts(self) -> int:
        return len(self.rejected) + (0 if self.exhausted else 1)

    def message(self) -> Message:
        return Message(
            role="user",
            content=self.text or "",
            attempts=self.attempts,
            rejected=list(self.rejected),
            end_prob=self.end_prob,
            end_prob_below=self.end_prob_below,
            truncated=self.truncated or None,
            faults=list(self.faults) if self.faults is not None else None,
        )


@dataclass(frozen=True)
class FaultPolicy:
    """How a simulated user's faults (:mod:`userlm.faults`) are caught: the rules always; a judge
    model's verdicts too when given; the faults in ``reject`` refuse the draft, as a guardrail."""

    reject: tuple[str, ...] = ()  #: faults that refuse a draft (it is drafted again; the refusal names the fault)
    judge: ChatModel | None = None  #: a chat model asked for its verdict on every turn (``--fault-judge``)
    check: bool = True  #: False: no checks and no ``faults`` recorded (a scripted user replaying a task's own words)


class SimulatedUser:
    """A user model plus the guardrails that keep its turns realistic, and the fault checks that
    say where they are not."""

    def __init__(self, model: UserModel, guardrails: GuardrailConfig | None = None, faults: FaultPolicy | None = None):
        self.model = model
        self.guardrails = guardrails or GuardrailConfig()
        self.faults = faults or FaultPolicy()

    async def _faults(self, text: str | None, ended: bool, context: TurnContext, seed: int, judged: Usage) -> list[str]:
        found = detect(text, ended=ended, context=context)
        judge = self.faults.judge
        if judge is not None:
            answer = await judge.reply([{"role": "user", "content": judge_prompt(text, ended, context)}], seed=seed)
            judged.add(answer.prompt_tokens, answer.completion_tokens)
            found = [name for name in FAULTS if name in set(found) | set(judge_verdict(answer.text))]
        return found

    @property
    def name(self) -> str:
        return self.model.name

    async def next_turn(self, intent: str | None, messages: list[Message] | list[dict], *, seed: int = 0,
                        conversation: ConversationHandle | str | None = None, required: Sequence[str] = (),
                        sampling: SamplingSettings | None = None) -> UserTurn:
        """Draft the next user turn, resampling refused drafts up to ``max_attempts`` times.
        ``conversation`` is the conversation's handle (or its id, for a new handle): engines route
        its turns and key their caches on its id and keep the token ids of its turns in it; without
        one, nothing is kept for it between turns. ``required``: the details the intent requires
        the user to give before ending (for the ``premature_end`` fault). ``sampling``: this turn's
        own sampling, for a model that honours it per request (:class:`SamplesPerRequest`)."""
        if sampling is not None and not isinstance(self.model, SamplesPerRequest):
            raise ConfigurationError(f"{self.model.name} samples with its own settings only; leave out the turn's own sampling.")
        handle = handle_of(conversation, seed)
        chat = [m if isinstance(m, dict) else m.chat() for m in messages]
        earlier = [m["content"] for m in chat if m["role"] == "user"]
        g = self.guardrails
        turn = UserTurn(text=None, faults=[] if self.faults.check else None)
        for attempt in range(g.max_attempts):
            request = UserTurnRequest(
                intent=intent,
                messages=chat,
                seed=derive_seed(seed, len(earlier), attempt),
                attempt=attempt,
                allow_end=g.end_allowed(len(earlier)),
                banned_first_words=g.first_words,
                end_threshold=g.end_threshold,
                conversation=handle,
                sampling=sampling,
            )
            draft = await self.model.draft(request)
            turn.usage.add(draft.prompt_tokens, draft.completion_tokens)
            if turn.end_prob is None and turn.end_prob_below is None:
                turn.end_prob, turn.end_prob_below = draft.end_prob, draft.end_prob_below
            verdict = check_draft(draft.text, ended=draft.ended, intent=intent, earlier_user_turns=earlier, config=g)
            if verdict.accepted and self.faults.check:
                faults = await self._faults(None if verdict.ended else draft.text, verdict.ended,
                                            TurnContext(intent, earlier, tuple(required)), derive_seed(seed, len(earlier), attempt, "faults"),
                                            turn.judged)
                refused = [name for name in faults if name in self.faults.reject]
                if refused:
                    turn.rejected.append(Rejection.of(draft.text if not draft.ended else END_OF_CONVERSATION, f"fault:{refused[0]}"))
                    continue
                turn.faults = faults
            if verdict.accepted:
                turn.ended = verdict.ended
                turn.text = None if verdict.ended else draft.text
                turn.truncated = draft.truncated and not verdict.ended
                return turn
            shown = draft.text if not draft.ended else END_OF_CONVERSATION
            turn.rejected.append(Rejection.of(shown, verdict.reason or "refused"))
        turn.exhausted = True
        return turn

    def session(self, intent: str | None, *, seed: int = 0, conversation: ConversationHandle | str | None = None) -> UserSession:
        """Drive this user turn by turn from your own code (``conversation``: its id, else a new one)."""
        return UserSession(self, intent, seed, conversation)


class UserSession:
    """One conversation with a simulated user, driven by the caller."""

    def __init__(self, user: SimulatedUser, intent: str | None, seed: int, conversation: ConversationHandle | str | None = None):
        import uuid

        self.user = user
        self.intent = intent
        self.seed = seed
        #: its handle: engines route and keep its cache by its id, and keep its turns' token ids in it
        self.conversation = handle_of(conversation or f"session-{uuid.uuid4().hex}", seed)
        self.messages: list[Message] = []
        self.last: UserTurn | None = None
        self.usage = Usage()

    @property
    def over(self) -> bool:
        return self.last is not None and self.last.text is None

    async def astep(self, assistant_reply: str | None = None) -> str | None:
        """Record the assistant's reply (omit it for the first turn) and return the user's next
        turn, or None when the user ends the conversation (or every draft was refused)."""
        if self.over:
            raise RuntimeError("the conversation is over; start a new session")
        if assistant_reply is not None:
            self.messages.append(Message(role="assistant", content=assistant_reply))
        elif self.messages:
            raise ValueError("pass the assistant's reply to the previous user turn")
        turn = await self.user.next_turn(self.intent, self.messages, seed=self.seed, conversation=self.conversation)
        self.last = turn
        self.usage.merge(turn.usage)
        if turn.text is not None:
            self.messages.append(turn.message())
        return turn.text

    def step(self, assistant_reply: str | None = None) -> str | None:
        """Synchronous :meth:`astep` (use ``astep`` inside a running event loop)."""
        return asyncio.run(self.astep(assistant_reply))

    def chat_messages(self) -> list[dict[str, str]]:
        return [m.chat() for m in self.messages]
