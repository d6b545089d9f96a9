"""Run many conversations between a simulated user and an assistant, and keep every one.

Conversations run concurrently; each finished one is appended and flushed to the output at
once, so a crash loses only the conversations in flight, and running the same command again
finishes only what is missing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conversation import (
    Conversation,
    ConversationWriter,
    Message,
    Usage,
    conversation_id,
    iter_conversations,
    write_conversations,
)
from .errors import ConfigurationError, UserError
from .intents import Intent
from .models import lockstep
from .models.base import ChatModel
from .render import END_OF_CONVERSATION, assistant_view
from .runs import OutputLock, determinants, fingerprint, mismatch
from .user import SimulatedUser, derive_seed


@dataclass(frozen=True)
class RunSettings:
    """How many conversations, how long, how reproducible."""

    samples: int = 1  #: conversations per intent
    max_turns: int = 6  #: user turns per conversation at most
    seed: int = 0  #: run seed; each conversation derives its own from it and its id
    concurrency: int = 64  #: conversations in flight at once
    retry_errors: bool = False  #: redo conversations that ended with an error
    extend: bool = False  #: resume a file made with another --samples (or other intents), adding to it

    def __post_init__(self) -> None:
        if self.samples < 1 or self.max_turns < 1 or self.concurrency < 1:
            raise UserError("--samples, --max-turns and --concurrency must be at least 1.")


@dataclass
class RunSummary:
    """What a run did."""

    out: Path | None
    total: int  #: conversations the run covers
    skipped: int  #: already in the output from an earlier run
    written: int  #: finished in this run
    end_reasons: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  #: conversations of this run that failed, by error kind
    first_error: str | None = None  #: the first failure's message, as recorded
    conversations: list[Conversation] = field(default_factory=list)  #: every conversation of the run, in order

    def __repr__(self) -> str:
        # a line, not every conversation: asyncio formats the finished run's result when its loop closes
        out = str(self.out) if self.out is not None else None
        return (f"RunSummary(out={out!r}, total={self.total}, skipped={self.skipped}, written={self.written}, "
                f"end_reasons={dict(self.end_reasons)}, conversations=[{len(self.conversations)}])")


def _previous(out: Path, wanted: dict[str, dict[str, Any]], settings: RunSettings) -> dict[str, Conversation]:
    """The conversations ``out`` already holds, once they are known to come from this run's settings."""
    if not out.exists():
        return {}
    done: dict[str, Conversation] = {}
    for c in iter_conversations(out, tolerate_truncated_tail=True):
        done[c.id] = c
    if not done:
        return done
    anyone = next(iter(wanted.values()), None)
    for c in done.values():
        have = determinants(c.intent, c.settings, c.user_model or "", c.assistant_model or "")
        new = wanted.get(c.id)
        if new is None:  # a conversation this run does not cover: its run-wide settings must still agree
            if anyone is None:
                continue
            have, new = {**have, "intent": None}, {**anyone, "intent": None}
        problem = mismatch(out, c.id, have, new)
        if problem:
            raise UserError(problem)
        samples = c.settings.get("samples")
        if samples is not None and samples != settings.samples and not settings.extend:
            raise UserError(f"{out} was made with --samples {samples}, this run has --samples {settings.samples}; "
                            "pass --extend to add to the file, or write to another --out.")
    if settings.retry_errors:
        kept = {k: c for k, c in done.items() if c.error is None}
        if len(kept) != len(done):
            write_conversations(out, kept.values())
        done = kept
    return done


async def simulate_async(
    intents: Sequence[Intent],
    user: SimulatedUser,
    assistant: ChatModel,
    *,
    out: str | Path | None = None,
    settings: RunSettings = RunSettings(),
    generation: dict[str, Any] | None = None,
    progress: bool = True,
    on_finish: Callable[[Conversation], None] | None = None,
    after_reply: Callable[[Conversation], Awaitable[bool]] | None = None,
) -> RunSummary:
    """Simulate ``settings.samples`` conversations per intent; see :func:`simulate`."""
    from tqdm.auto import tqdm

    path = Path(out) if out is not None else None
    if path is not None and path.is_dir():
        raise UserError(f"{path} is a folder; --out takes a file (a JSONL of conversations), e.g. {path / 'run.jsonl'}.")
    jobs = [(intent, s) for intent in intents for s in range(settings.samples)]
    recorded = {
        "run_seed": settings.seed,
        "max_turns": settings.max_turns,
        "samples": settings.samples,
        "guardrails": user.guardrails.to_dict(),
        **(generation or {}),
    }
    wanted = {conversation_id(i.id, s): determinants(i.text, recorded, user.name, assistant.name) for i, s in jobs}
    lock = OutputLock(path) if path else None
    try:
        previous = _previous(path, wanted, settings) if path else {}
        writer = ConversationWriter(path) if path else None
    except BaseException:
        if lock:
            lock.release()
        raise
    todo = [(i, s) for i, s in jobs if conversation_id(i.id, s) not in previous]
    summary = RunSummary(out=path, total=len(jobs), skipped=len(jobs) - len(todo), written=0)
    finished: dict[str, Conversation] = {}
    bar = tqdm(total=len(jobs), initial=summary.skipped, unit="conv", desc="simulating", disable=not progress)
    limit = asyncio.Semaphore(settings.concurrency)
    flight = lockstep.gate()  # local models batch in lockstep with the conversations in flight
    flight.strict = not (lockstep.is_remote(user.model) or lockstep.is_remote(assistant))
    for model in (user.model, assistant):  # a run never starts from another run's cached keys and values,
        forget = getattr(model, "forget_conversations", None)  # so it reproduces in any process
        if forget is not None:
            forget()

    async def one(intent: Intent, sample: int) -> None:
        async with limit:
            await flight.enter()
            try:
                conversation = await run_conversation(intent, sample, user, assistant, settings, recorded, after_reply)
            finally:
                await flight.leave()
        conversation.fingerprint = fingerprint(wanted[conversation.id])
        finished[conversation.id] = conversation
        if writer:
            writer.write(conversation)
        summary.written += 1
        summary.end_reasons[conversation.end_reason] += 1
        if conversation.error is not None:
            summary.errors[f"{conversation.end_reason} ({conversation.error.split(':', 1)[0]})"] += 1
            summary.first_error = summary.first_error or f"{conversation.id}: {conversation.error}"
        if on_finish:
            on_finish(conversation)
        bar.update(1)
        bar.set_postfix(dict(summary.end_reasons), refresh=False)

    tasks = [asyncio.ensure_future(one(i, s)) for i, s in todo]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        if writer:
            writer.close()
        if lock:
            lock.release()
        for model in (user.model, assistant):
            close = getattr(model, "aclose", None)
            if close is not None:
                await close()
    order = [conversation_id(i.id, s) for i, s in jobs]
    summary.conversations = [finished.get(k) or previous[k] for k in order]
    return summary


async def run_conversation(
    intent: Intent,
    sample: int,
    user: SimulatedUser,
    assistant: ChatModel,
    settings: RunSettings,
    recorded: dict[str, Any],
    after_reply: Callable[[Conversation], Awaitable[bool]] | None = None,
) -> Conversation:
    """One conversation, from the first user turn to its end reason. ``after_reply`` sees the
    conversation after each assistant reply (it may add events to it) and returns True when the
    task is solved, which ends the conversation with ``task_solved``."""
    cid = conversation_id(intent.id, sample)
    seed = derive_seed(settings.seed, cid)
    conv = Conversation(
        id=cid,
        intent_id=intent.id,
        sample=sample,
        intent=intent.text,
        metadata=dict(intent.metadata),
        user_model=user.name,
        assistant_model=assistant.name,
        seed=seed,
        settings=recorded,
        usage={"user": Usage(), "assistant": Usage()},
    )
    started = time.perf_counter()
    for turn_index in range(settings.max_turns):
        try:
            turn = await user.next_turn(intent.text, conv.messages, seed=seed)
        except ConfigurationError:
            raise
        except Exception as exc:  # recorded, and the run goes on
            conv.end_reason, conv.error = "user_error", _describe(exc)
            break
        conv.usage["user"].merge(turn.usage)
        if turn.ended or turn.exhausted:
            conv.end_reason = "user_ended" if turn.ended else "guardrail_exhausted"
            final = turn.message()
            final.content = END_OF_CONVERSATION if turn.ended else ""
            conv.final_turn = final
            break
        conv.messages.append(turn.message())
        try:
            reply = await assistant.reply(assistant_view(conv.messages), seed=derive_seed(seed, "assistant", turn_index))
        except ConfigurationError:
            raise
        except Exception as exc:
            conv.end_reason, conv.error = "assistant_error", _describe(exc)
            break
        conv.usage["assistant"].add(reply.prompt_tokens, reply.completion_tokens)
        conv.messages.append(Message(role="assistant", content=reply.text))
        if after_reply is not None and await after_reply(conv):
            conv.end_reason = "task_solved"
            break
    else:
        conv.end_reason = "max_turns"
    conv.duration_s = round(time.perf_counter() - started, 4)
    return conv


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def simulate(
    intents: Sequence[Intent] | Sequence[str],
    user: SimulatedUser,
    assistant: ChatModel,
    **kwargs: Any,
) -> RunSummary:
    """Simulate conversations between ``user`` and ``assistant``, one or more per intent.

    ``intents`` may be :class:`~userlm.intents.Intent` objects or plain strings. Pass ``out`` to
    append each finished conversation to a JSONL file and resume from it; ``settings`` is a
    :class:`RunSettings`. Returns a :class:`RunSummary` whose ``conversations`` hold every record.
    """
    items = [i if isinstance(i, Intent) else Intent(id=str(n), text=i) for n, i in enumerate(intents)]
    return asyncio.run(simulate_async(items, user, assistant, **kwargs))
