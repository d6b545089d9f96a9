"""The conversation record: one JSON object per line, written by simulation, read by everything else.

A record holds the task intent, the messages in order, what the guardrails did for each user
turn, why the conversation ended, the models, the seed, the generation settings and the token
usage. ``SCHEMA_VERSION`` changes whenever a field changes meaning.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigurationError, UserError
from .files import replacing

SCHEMA_VERSION = 1

#: how a conversation ended; ``assistant_quit`` is a person playing the assistant in ``userlm chat``
#: who stopped (``/quit``, Ctrl-D or Ctrl-C)
EndReason = Literal["user_ended", "max_turns", "guardrail_exhausted", "user_error", "assistant_error", "task_solved",
                    "assistant_quit"]


#: refused drafts are stored up to this many characters (a runaway draft can be megabytes)
MAX_DRAFT_CHARS = 2000


class Rejection(BaseModel):
    """A user-turn draft that a guardrail refused."""

    draft: str = Field(description=f"the text the user model produced (its first {MAX_DRAFT_CHARS} characters)")
    reason: str = Field(description="which guardrail refused it (userlm.guardrails.RefusalReason)")
    length: int | None = Field(default=None, description="the draft's whole length in characters, when it was cut to MAX_DRAFT_CHARS")

    @classmethod
    def of(cls, draft: str, reason: str) -> Rejection:
        """A refusal as stored: a long draft is cut, keeping its length."""
        if len(draft) <= MAX_DRAFT_CHARS:
            return cls(draft=draft, reason=reason)
        return cls(draft=draft[:MAX_DRAFT_CHARS], reason=reason, length=len(draft))


class Event(BaseModel):
    """Something that happened at a turn, beyond its text (an answer attempt, a shard revealed, ...);
    kinds userlm does not know keep their fields as they were written."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="what happened")

    @model_validator(mode="after")
    def _known_kinds_are_whole(self) -> Event:
        if type(self) is Event and self.type in _KNOWN_EVENTS:  # e.g. an answer attempt without its score
            raise ValueError(f"a {self.type} event lacks the fields it needs")
        return self


class AnswerAttempt(Event):
    """The assistant's reply held an answer to the task, and it was graded."""

    type: Literal["answer_attempt"] = "answer_attempt"
    answer: str = Field(description="the answer as extracted (its first 4000 characters)")
    score: float = Field(description="the grade, 0 to 1")
    isolation: str | None = Field(default=None, description="for code: how it was isolated while its tests ran")
    detail: str | None = Field(default=None, description="for code: why it failed, when it did")


_KNOWN_EVENTS = {"answer_attempt"}


class Message(BaseModel):
    """One turn. User turns also carry what the guardrails did for them."""

    role: Literal["user", "assistant"]
    content: str
    attempts: int | None = Field(default=None, description="drafts generated for this user turn, the kept one included")
    rejected: list[Rejection] | None = Field(default=None, description="drafts refused before this turn, in order")
    end_prob: float | None = Field(
        default=None, description="the user model's probability of ending the conversation instead of this turn"
    )
    end_prob_below: float | None = Field(
        default=None, description="when end_prob is unknown: the server's log-probabilities bound it below this "
                                  "(the end token was outside their top entries)")
    truncated: bool | None = Field(default=None, description="the user model's token budget ran out before this turn ended")
    faults: list[str] | None = Field(
        default=None, description="user turns: the faults the turn shows (userlm.faults.FAULTS), empty when clean; "
                                  "absent in records made before faults were caught")
    events: list[Annotated[AnswerAttempt | Event, Field(union_mode="left_to_right")]] | None = Field(
        default=None, description="things that happened at this turn (answer attempts, shards revealed, ...)"
    )

    def answer_attempts(self) -> list[AnswerAttempt]:
        return [e for e in self.events or [] if isinstance(e, AnswerAttempt)]

    def chat(self) -> dict[str, str]:
        """The plain ``{role, content}`` form that chat APIs take."""
        return {"role": self.role, "content": self.content}


class Usage(BaseModel):
    """Tokens spent by one side of the conversation."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def merge(self, other: Usage) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


def token_totals(convs: Iterable[Conversation]) -> dict[str, dict[str, int]]:
    """Conversations' tokens by side (user, assistant, ...): prompt and completion, summed."""
    return summed_tokens(usage_totals(c.usage) for c in convs)


def usage_totals(by_side: Mapping[str, Usage]) -> dict[str, dict[str, int]]:
    """Tokens by side, in the form the reports keep them (sides that asked nothing left out)."""
    return {side: {"prompt": u.prompt_tokens, "completion": u.completion_tokens}
            for side, u in sorted(by_side.items()) if u.calls or u.prompt_tokens or u.completion_tokens}


def summed_tokens(totals: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Several token totals (:func:`usage_totals`' form) added up, side by side."""
    summed: dict[str, dict[str, int]] = {}
    for one in totals:
        for side, t in one.items():
            into = summed.setdefault(side, {"prompt": 0, "completion": 0})
            into["prompt"] += t.get("prompt", 0)
            into["completion"] += t.get("completion", 0)
    return dict(sorted(summed.items()))


class Conversation(BaseModel):
    """One simulated (or ingested) conversation."""

    schema_version: int = SCHEMA_VERSION
    id: str = Field(description="unique per intent and sample: '<intent_id>#<sample>'")
    intent_id: str
    sample: int = 0
    intent: str | None = Field(description="the task intent given to the user model (None: no-intent variant)")
    metadata: dict[str, Any] = Field(default_factory=dict, description="intent fields beyond id and intent, untouched")
    messages: list[Message] = Field(default_factory=list)
    end_reason: EndReason | None = None
    final_turn: Message | None = Field(
        default=None,
        description="the user turn that ended the conversation (user_ended, guardrail_exhausted): "
        "its end probability and refused drafts; not part of messages",
    )
    user_model: str | None = None
    assistant_model: str | None = None
    seed: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict, description="generation settings and guardrail configuration")
    fingerprint: str | None = Field(default=None, description="hash of what determined it (userlm.runs.determinants)")
    usage: dict[str, Usage] = Field(default_factory=dict, description="token usage per side: 'user', 'assistant'")
    error: str | None = None
    duration_s: float | None = None

    def user_turns(self) -> list[Message]:
        return [m for m in self.messages if m.role == "user"]

    def answer_attempts(self) -> list[AnswerAttempt]:
        """Every graded answer of the conversation, in order."""
        return [e for m in self.messages for e in m.answer_attempts()]

    def to_json(self) -> str:
        data = self.model_dump(mode="json")
        data["messages"] = [m.model_dump(mode="json", exclude_none=True) for m in self.messages]
        if self.final_turn is not None:
            data["final_turn"] = self.final_turn.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, ensure_ascii=False)


def conversation_id(intent_id: str, sample: int) -> str:
    return f"{intent_id}#{sample}"


def read_conversations(path: str | Path) -> list[Conversation]:
    """Read every record of a JSONL file; a malformed line is an error naming the file and line."""
    return list(iter_conversations(path))


def iter_conversations(path: str | Path, *, tolerate_truncated_tail: bool = False) -> Iterator[Conversation]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; give the path of a JSONL file of conversations.")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the path of a JSONL file of conversations.")
    with open(path, "rb") as f:  # a record at a time: resuming a run of any size holds one line, not the file
        held = None
        for number, raw in enumerate(f, start=1):
            if held is not None:
                record = _record(path, *held, last=False, tolerate=tolerate_truncated_tail)
                if record is not None:
                    yield record
            held = (number, raw)
        if held is not None:
            record = _record(path, *held, last=True, tolerate=tolerate_truncated_tail)
            if record is not None:
                yield record


def _record(path: Path, number: int, raw: bytes, *, last: bool, tolerate: bool) -> Conversation | None:
    if not raw.strip():
        return None
    try:
        return Conversation.model_validate_json(raw)
    except ValidationError as exc:
        if tolerate and last and not raw.endswith(b"\n"):
            return None  # the last line was cut off by a crash; it is redone
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "record"
        raise UserError(
            f"{path}:{number}: not a conversation record ({where}: {first.get('msg')}); "
            "fix or remove that line."
        ) from None


#: held while a record is written, so that a forced exit (see ``userlm.cli.stopping``) never cuts one
WRITE_LOCK = threading.Lock()


class ConversationWriter:
    """Appends finished conversations to a JSONL file, one flushed and synced line each.

    Opening an existing file cuts off a last line that a crash left unfinished, so the next
    record never glues onto it. The file is created with its first record: a run that writes
    nothing leaves nothing.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        _drop_unfinished_tail(self.path)
        self._file: IO[str] | None = None

    def write(self, conversation: Conversation) -> None:
        line = conversation.to_json() + "\n"
        with WRITE_LOCK:
            try:
                if self._file is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.path, "a", encoding="utf-8")
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                self._cut_back()
                raise ConfigurationError(f"cannot write {self.path} ({exc.strerror or exc}); the records before this one are "
                                         "kept. Free some space (or fix the folder), then run the same command again.") from None

    def _cut_back(self) -> None:
        """After a failed write: drop whatever part of the line reached the file."""
        try:
            if self._file is not None:
                self._file.close()
        except OSError:
            pass  # the buffer that could not be written
        self._file = None
        try:
            _drop_unfinished_tail(self.path)
        except OSError:
            pass

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ConversationWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_unfinished_tail(path: Path) -> None:
    """Cut off a last line that a crash left unfinished; a complete last record that merely lacks
    its newline is kept, and the newline added."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:  # only the tail is read, whatever the file's size
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        keep, block = 0, 1 << 16
        position = size
        while position > 0:
            position = max(0, position - block)
            f.seek(position)
            chunk = f.read(min(block, size - position))
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = position + newline + 1
                break
        f.seek(keep)
        try:
            Conversation.model_validate_json(f.read())
        except ValidationError:
            f.truncate(keep)
        else:
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())


def write_conversations(path: str | Path, conversations: Iterable[Conversation]) -> None:
    """Write a whole file atomically (temporary file, then rename)."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for c in conversations:
            f.write(c.to_json() + "\n")
