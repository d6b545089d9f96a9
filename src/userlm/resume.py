"""What a run covers, and what its output already holds: how a run resumes.

A run covers ``samples`` conversations per intent. Its output may hold conversations from
earlier runs of the same command: those are checked against this run's settings (one sentence
naming the first that differs, before anything runs) and skipped. Neither the intents nor the
ids already written are held in memory: intents are read as the run goes (an
:class:`~userlm.intents.IntentFile`) and the ids (with a digest of each one's intent) live in an
:class:`~userlm.ledger.IdLedger`, so
a run of a million conversations, or its resume, costs what a run of a thousand does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .conversation import conversation_id, iter_conversations, write_conversations
from .errors import UserError
from .intents import Intent, Intents
from .ledger import IdLedger
from .runs import determinants, fingerprint, mismatch


class RunPlan:
    """Which conversations a run covers, what determines each, and which the output holds."""

    def __init__(self, intents: Intents, settings: Any, recorded: dict[str, Any], user: str, assistant: str):
        self.intents, self.settings = intents, settings
        self.recorded, self.user, self.assistant = recorded, user, assistant
        self.total = len(intents) * settings.samples
        self.done = IdLedger()  #: the ids the output held when the run began (and still holds)
        self.tokens_before = 0  #: the tokens those conversations used

    def determinants(self, intent: str | None) -> dict[str, Any]:
        """What determines a conversation of this run with this intent."""
        return determinants(intent, self.recorded, self.user, self.assistant)

    def pairs(self) -> Iterator[tuple[Intent, int]]:
        return ((i, s) for i in self.intents for s in range(self.settings.samples))

    def ids(self) -> Iterator[str]:
        return (conversation_id(i.id, s) for i, s in self.pairs())

    def todo(self) -> Iterator[tuple[Intent, int]]:
        """The (intent, sample) pairs still to run, lazily."""
        if not self.done:
            return self.pairs()
        return ((i, s) for i, s in self.pairs() if conversation_id(i.id, s) not in self.done)

    def read_output(self, out: Path) -> int:
        """Take in what ``out`` already holds (checked against this run's settings; with
        ``retry_errors``, its failed conversations dropped from it); how many of this run's
        conversations it holds. Raises one sentence when a conversation there was made otherwise."""
        if not out.exists():
            return 0
        first = next(iter(self.intents), None)
        anyone = {**self.determinants(first.text), "intent": None} if first is not None else None
        redone = 0
        for c in iter_conversations(out, tolerate_truncated_tail=True):
            # the run-wide settings of every record must agree; the intent is checked below, per covered id
            if anyone is not None:
                have = determinants(c.intent, c.settings, c.user_model or "", c.assistant_model or "")
                problem = mismatch(out, c.id, {**have, "intent": None}, anyone)
                if problem:
                    raise UserError(problem)
            samples = c.settings.get("samples")
            if samples is not None and samples != self.settings.samples and not self.settings.extend:
                raise UserError(f"{out} was made with --samples {samples}, this run has --samples {self.settings.samples}; "
                                "pass --extend to add to the file, or write to another --out.")
            used = sum(u.prompt_tokens + u.completion_tokens for u in c.usage.values())
            self.done.add(c.id, fingerprint(c.intent), flag=c.error is not None)
            self.tokens_before += used
            if c.error is not None:
                redone += used
        if self.settings.retry_errors and self.done.flagged():
            self.tokens_before -= redone  # they are dropped from the file and done again
            write_conversations(out, (c for c in iter_conversations(out, tolerate_truncated_tail=True) if not self.done.is_flagged(c.id)))
            self.done.drop_flagged()
        return self._covered(out)

    def _covered(self, out: Path) -> int:
        """How many of this run's conversations the output holds, each checked to have this run's intent."""
        if not self.done:
            return 0
        count = 0
        for intent, sample in self.pairs():
            cid = conversation_id(intent.id, sample)
            recorded = self.done.text(cid)
            if recorded is None:
                continue
            if recorded != fingerprint(intent.text):
                was = next(c.intent for c in iter_conversations(out, tolerate_truncated_tail=True) if c.id == cid)
                raise UserError(mismatch(out, cid, {"intent": was}, {"intent": intent.text}) or "")
            count += 1
        return count

    def close(self) -> None:
        self.done.close()
