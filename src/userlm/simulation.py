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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .conversation import Conversation, ConversationWriter, Message, Usage, conversation_id, iter_conversations
from .errors import ConfigurationError, UserError
from .intents import Intent, IntentFile, Intents
from .models.base import ChatModel, HasWeights, close, forget_conversations, is_remote, join_lockstep, reasked, reply_in, sampling_of
from .models.handle import ConversationHandle
from .models.lockstep import Lockstep
from .models.retry import ConnectionLost, RequestTimeout
from .render import assistant_view
from .resume import RunPlan
from .runs import OutputLock, fingerprint
from .user import SimulatedUser, UserTurn, derive_seed

#: failures that say the server is gone or too slow, not that the conversation went wrong
UNREACHABLE = (ConnectionLost, RequestTimeout)


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
    unfinished: int = 0  #: stopped because a server could not be reached: not recorded, redone on the next run
    first_unfinished: str | None = None
    reasked: int = 0  #: turns asked again of another replica after theirs failed (replicated models)
    conversations: list[Conversation] = field(default_factory=list)  #: every conversation of the run, in order (when kept)
    tokens: dict[str, Usage] = field(default_factory=dict)  #: this run's tokens, by side (user, assistant)
    tokens_before: int = 0  #: the tokens of the conversations the output held before this run
    token_budget: int | None = None  #: the most tokens the output's conversations may use in all
    not_started: int = 0  #: conversations left unstarted because the token budget was spent

    @property
    def tokens_this_run(self) -> int:
        return sum(u.prompt_tokens + u.completion_tokens for u in self.tokens.values())

    @property
    def tokens_in_all(self) -> int:
        """The tokens of every conversation in the output: earlier runs' and this one's."""
        return self.tokens_before + self.tokens_this_run

    @property
    def budget_spent(self) -> bool:
        return self.token_budget is not None and self.tokens_in_all >= self.token_budget

    def __repr__(self) -> str:
        # a line, not every conversation: asyncio formats the finished run's result when its loop closes
        out = str(self.out) if self.out is not None else None
        return (f"RunSummary(out={out!r}, total={self.total}, skipped={self.skipped}, written={self.written}, "
                f"end_reasons={dict(self.end_reasons)}, conversations=[{len(self.conversations)}])")


class Unfinished(Exception):
    """A conversation stopped because its server could not be reached or kept timing out: it is
    not recorded (it is not the model's doing), and running the same command again redoes it."""

    def __init__(self, conversation_id: str, cause: Exception):
        super().__init__(f"{conversation_id}: {_describe(cause)}")
        self.cause = cause


async def simulate_async(
    intents: Intents,
    user: SimulatedUser,
    assistant: ChatModel,
    *,
    out: str | Path | None = None,
    settings: RunSettings = RunSettings(),
    generation: dict[str, Any] | None = None,
    progress: bool = True,
    on_finish: Callable[[Conversation], None] | None = None,
    after_reply: Callable[[Conversation], Awaitable[bool]] | None = None,
    keep: bool = True,
    helpers: Sequence[object] = (),
    token_budget: int | None = None,
) -> RunSummary:
    """Simulate ``settings.samples`` conversations per intent; see :func:`simulate`.

    With a ``token_budget``, no conversation starts once the output's conversations (earlier runs'
    included) have used that many tokens, both sides together: those in flight finish and are
    written whole, the rest are left for the same command with a larger budget
    (``summary.not_started``).

    With ``keep=False`` (and ``out``), finished conversations are written and let go: the run's
    memory is what is in flight, whatever its size (the ids already written are kept on disk, and
    an :class:`~userlm.intents.IntentFile` is read as the run goes). ``helpers``: the
    other models a conversation waits on (those ``after_reply`` or the user ask), so that local
    ones batch in step with the run too."""
    path = _output_path(out, keep)
    recorded = run_record(user, assistant, settings, generation)
    plan = RunPlan(intents, settings, recorded, user.name, assistant.name)
    try:
        lock, skipped, writer = _open_output(path, plan)
        summary = RunSummary(out=path, total=plan.total, skipped=skipped, written=0, tokens_before=plan.tokens_before,
                             token_budget=token_budget)
        keeper = _Keeper(summary, writer, plan, keep, on_finish, progress)
        models = (user.model, assistant, *helpers)
        flight = _start_models(models)
        reasked_before = sum(reasked(m) for m in (user.model, assistant))

        async def one(intent: Intent, sample: int) -> None:
            if summary.budget_spent:
                summary.not_started += 1
                return
            try:
                async with flight.conversation():
                    conversation = await run_conversation(intent, sample, user, assistant, settings, recorded, after_reply)
            except Unfinished as exc:
                keeper.unfinished(exc)
            else:
                keeper.finished(conversation)

        try:
            await _in_pool(plan.todo(), one, settings.concurrency)
        finally:
            keeper.close()
            summary.reasked = sum(reasked(m) for m in (user.model, assistant)) - reasked_before
            if lock:
                lock.release()
            await _release_models(models, (user.model, assistant))
        if keep:
            summary.conversations = keeper.in_order(path)
        return summary
    finally:
        plan.close()  # its ledger of ids, on disk


def _output_path(out: str | Path | None, keep: bool) -> Path | None:
    """The run's output file, checked: a file, and given when conversations are not kept in memory."""
    path = Path(out) if out is not None else None
    if path is not None and path.is_dir():
        raise UserError(f"{path} is a folder; --out takes a file (a JSONL of conversations), e.g. {path / 'run.jsonl'}.")
    if not keep and path is None:
        raise UserError("simulate with keep=False needs out: the conversations would go nowhere.")
    return path


def run_record(user: SimulatedUser, assistant: ChatModel, settings: RunSettings,
               generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run records as its settings: the run's, the guardrails, how each model samples
    (read off the models, :func:`sampling_record`), and what the caller adds."""
    return {
        "run_seed": settings.seed,
        "max_turns": settings.max_turns,
        "samples": settings.samples,
        "guardrails": user.guardrails.to_dict(),
        **fault_record(user),
        **sampling_record(user.model, assistant),
        **(generation or {}),
    }


def _open_output(path: Path | None, plan: RunPlan):
    """The output's lock and writer, once what the output already holds is taken in (``plan.read_output``);
    nothing is held when that fails."""
    if path is None:
        return None, 0, None
    lock = OutputLock(path)
    try:
        return lock, plan.read_output(path), ConversationWriter(path)
    except BaseException:
        lock.release()
        raise


class _Keeper:
    """What happens to each finished conversation: written, kept, counted, shown on the bar."""

    def __init__(self, summary: RunSummary, writer: ConversationWriter | None, plan: RunPlan, keep: bool,
                 on_finish: Callable[[Conversation], None] | None, progress: bool):
        from tqdm.auto import tqdm

        self.summary, self.writer, self.plan, self.keep, self.on_finish = summary, writer, plan, keep, on_finish
        self.kept: dict[str, Conversation] = {}
        self.bar = tqdm(total=summary.total, initial=summary.skipped, unit="conv", desc="simulating", disable=not progress)

    def finished(self, conversation: Conversation) -> None:
        summary = self.summary
        conversation.fingerprint = fingerprint(self.plan.determinants(conversation.intent))
        if self.keep:
            self.kept[conversation.id] = conversation
        if self.writer:
            self.writer.write(conversation)
        summary.written += 1
        summary.end_reasons[conversation.end_reason] += 1
        for side, used in conversation.usage.items():
            summary.tokens.setdefault(side, Usage()).merge(used)
        if conversation.error is not None:
            summary.errors[f"{conversation.end_reason} ({conversation.error.split(':', 1)[0]})"] += 1
            summary.first_error = summary.first_error or f"{conversation.id}: {conversation.error}"
        if self.on_finish:
            self.on_finish(conversation)
        self.bar.update(1)
        self.bar.set_postfix(dict(summary.end_reasons), refresh=False)

    def unfinished(self, exc: Unfinished) -> None:
        self.summary.unfinished += 1
        self.summary.first_unfinished = self.summary.first_unfinished or str(exc)

    def close(self) -> None:
        self.bar.close()
        if self.writer:
            self.writer.close()

    def in_order(self, path: Path | None) -> list[Conversation]:
        """Every conversation of the run in intent order: this run's and those an earlier run wrote."""
        done = self.plan.done
        previous = {c.id: c for c in iter_conversations(path, tolerate_truncated_tail=True) if c.id in done} if done and path else {}
        return [c for c in (self.kept.get(k) or previous.get(k) for k in self.plan.ids()) if c is not None]


def _start_models(models: Sequence[object]) -> Lockstep:
    """Local models batch in step with the conversations in flight (see :mod:`userlm.models.lockstep`)
    and start from no other run's cached keys and values, so a run reproduces in any process."""
    flight = Lockstep(strict=not any(is_remote(m) for m in models))
    for model in models:
        forget_conversations(model)
        join_lockstep(model, flight)
    return flight


async def _release_models(models: Sequence[object], closing: Sequence[object]) -> None:
    """The run is over: local models batch freely again, and those in this process drop its cached
    keys and values (a long-lived process running run after run keeps its memory flat)."""
    for model in models:
        join_lockstep(model, None)
        if isinstance(model, HasWeights):
            forget_conversations(model)
    for model in closing:
        await close(model)


async def _in_pool(todo, one: Callable[..., Awaitable[None]], concurrency: int) -> None:
    """``one(*item)`` for every item of ``todo`` by a fixed pool of workers (tasks exist for what is
    in flight only); cancelling stops every worker."""

    async def worker() -> None:
        for item in todo:
            await one(*item)

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def fault_record(user: SimulatedUser) -> dict[str, Any]:
    """How the run catches faults, when it does more than the rules (which every run applies)."""
    policy = user.faults
    if not policy.reject and policy.judge is None:
        return {}
    return {"faults": {"reject": list(policy.reject), "judge": policy.judge.name if policy.judge is not None else None}}


def required_details(metadata: dict[str, Any]) -> tuple[str, ...]:
    """The details an intent requires the user to give before ending (``required_details`` in
    its metadata, as SimulatorArena's bullet-point answers are read), for the premature_end fault."""
    details = metadata.get("required_details") or ()
    return tuple(str(d) for d in details if str(d).strip()) if isinstance(details, (list, tuple)) else ()


def sampling_record(user_model: object, assistant: object) -> dict[str, Any]:
    """What a run records of how each side samples, read off the models themselves (a side
    that does not sample, a script or a function, records nothing), so that a run started from
    Python is resumed as honestly as one from the command line."""
    record = {}
    for side, model in (("user", user_model), ("assistant", assistant)):
        sampling = sampling_of(model)
        if sampling is not None:
            record[f"{side}_sampling"] = asdict(sampling)
    return record


def conversation_seed(run_seed: int, conversation: str) -> int:
    """The one place a conversation's seed comes from: the run's seed and the conversation's id
    (``<intent id>#<sample>``). ``simulate``, ``chat``, the Inspect solver and ``eval-user`` all
    derive it here, so the same seed and intent give the same user turns from any of them."""
    return derive_seed(run_seed, conversation)


class AssistantQuit(Exception):
    """The assistant's side stopped the conversation (a person typing ``/quit``): it ends as
    ``assistant_quit``."""


@dataclass(frozen=True)
class LoopHooks:
    """What an entry point adds to the one conversation loop (:func:`converse`)."""

    #: after each user turn, kept or final (printing it, logging it); called with the conversation and the turn
    on_user_turn: Callable[[Conversation, UserTurn], None] | None = None
    #: after each assistant reply: may add events to it; True ends the conversation as ``task_solved``
    after_reply: Callable[[Conversation], Awaitable[bool]] | None = None
    #: False: the last allowed user turn gets no reply (the loop ends with that turn)
    answer_last_turn: bool = True


def new_conversation(intent: Intent, sample: int, user: SimulatedUser, assistant: ChatModel, run_seed: int,
                     recorded: dict[str, Any] | None = None) -> Conversation:
    """The record a conversation starts as: its id, its seed (:func:`conversation_seed`), who talks."""
    cid = conversation_id(intent.id, sample)
    return Conversation(
        id=cid, intent_id=intent.id, sample=sample, intent=intent.text, metadata=dict(intent.metadata), user_model=user.name,
        assistant_model=assistant.name, seed=conversation_seed(run_seed, cid), settings=recorded or {},
        usage={"user": Usage(), "assistant": Usage()},
    )


async def converse(conv: Conversation, user: SimulatedUser, assistant: ChatModel, max_turns: int,
                   hooks: LoopHooks = LoopHooks()) -> Conversation:
    """The conversation loop every entry point drives: user turn, assistant reply, until the user
    ends, the guardrails give up, a hook ends it, an error, or ``max_turns`` user turns. Fills in
    the record's messages, usage, end reason and duration. A server that cannot be reached raises
    :class:`Unfinished` (the conversation is not the model's doing); a configuration error is raised;
    any other error is recorded (``user_error`` / ``assistant_error``)."""
    started = time.perf_counter()
    handle = ConversationHandle(conv.id, conv.seed or 0)  # every request of this conversation, either side, carries it
    for turn_index in range(max_turns):
        try:
            turn = await user.next_turn(conv.intent, conv.messages, seed=conv.seed or 0, conversation=handle,
                                        required=required_details(conv.metadata))
        except ConfigurationError:
            raise
        except UNREACHABLE as exc:
            raise Unfinished(conv.id, exc) from exc
        except Exception as exc:  # recorded, and the run goes on
            conv.end_reason, conv.error = "user_error", _describe(exc)
            break
        conv.usage.setdefault("user", Usage()).merge(turn.usage)
        if turn.judged.calls:  # the fault judge's tokens: a side of their own
            conv.usage.setdefault("fault_judge", Usage()).merge(turn.judged)
        if hooks.on_user_turn is not None:
            hooks.on_user_turn(conv, turn)
        if turn.end_reason is not None:
            conv.end_reason = turn.end_reason
            conv.final_turn = turn.final_message()
            break
        conv.messages.append(turn.message())
        if turn_index == max_turns - 1 and not hooks.answer_last_turn:
            conv.end_reason = "max_turns"
            break
        try:
            reply = await reply_in(assistant, assistant_view(conv.messages), seed=derive_seed(conv.seed or 0, "assistant", turn_index),
                                   conversation=handle)
        except ConfigurationError:
            raise
        except AssistantQuit:
            conv.end_reason = "assistant_quit"
            break
        except UNREACHABLE as exc:
            raise Unfinished(conv.id, exc) from exc
        except Exception as exc:
            conv.end_reason, conv.error = "assistant_error", _describe(exc)
            break
        conv.usage.setdefault("assistant", Usage()).add(reply.prompt_tokens, reply.completion_tokens)
        conv.messages.append(Message(role="assistant", content=reply.text))
        if hooks.after_reply is not None and await hooks.after_reply(conv):
            conv.end_reason = "task_solved"
            break
    else:
        conv.end_reason = "max_turns"
    conv.duration_s = round(time.perf_counter() - started, 4)
    return conv


async def run_conversation(
    intent: Intent,
    sample: int,
    user: SimulatedUser,
    assistant: ChatModel,
    settings: RunSettings,
    recorded: dict[str, Any],
    after_reply: Callable[[Conversation], Awaitable[bool]] | None = None,
) -> Conversation:
    """One conversation of a run, from the first user turn to its end reason. ``after_reply`` sees
    the conversation after each assistant reply (it may add events to it) and returns True when
    the task is solved, which ends the conversation with ``task_solved``."""
    conv = new_conversation(intent, sample, user, assistant, settings.seed, recorded)
    return await converse(conv, user, assistant, settings.max_turns, LoopHooks(after_reply=after_reply))


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def simulate(
    intents: Sequence[Intent] | Sequence[str] | IntentFile,
    user: SimulatedUser,
    assistant: ChatModel,
    **kwargs: Any,
) -> RunSummary:
    """Simulate conversations between ``user`` and ``assistant``, one or more per intent.

    ``intents`` may be :class:`~userlm.intents.Intent` objects or plain strings. Pass ``out`` to
    append each finished conversation to a JSONL file and resume from it; ``settings`` is a
    :class:`RunSettings`. Returns a :class:`RunSummary` whose ``conversations`` hold every record.
    """
    items = intents if isinstance(intents, IntentFile) else [
        i if isinstance(i, Intent) else Intent(id=str(n), text=str(i)) for n, i in enumerate(intents)]
    return asyncio.run(simulate_async(items, user, assistant, **kwargs))
