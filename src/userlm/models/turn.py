"""When a user turn ends: the token-level rules, written once.

Every engine writes a user turn token by token under the same rules, and every engine reads
them from here:

* **P(end) at the content's start.** Where the turn's content starts (once the expected opening
  whitespace is written, or earlier when a token that is not whitespace, or the end token, comes
  first), P(``<|endconversation|>``) of the raw logits is recorded; with a threshold, reaching it
  ends the conversation there (the end token is the turn).
* **The end token.** As the whole turn (nothing but whitespace before it) it ends the
  conversation; after some text it closes the turn, which is kept, and the conversation goes on.
  Where ending is not allowed, or a threshold decides instead, it is never sampled.
* **Banned first words.** Until a token holding a letter or digit is written, the ids that begin
  a banned first word cannot be sampled.
* **Stop tokens and budgets.** A stop token (end of turn) closes the turn; a row's own token
  budget cuts it (the turn is then marked truncated).

:class:`TurnReader` holds one row's state. The ``hf:`` engine's logits processor
(:mod:`userlm.models.hf.engine`) feeds it each sampled token; vLLM's logits processor
(:mod:`userlm.models.vllm.guard`) asks it what to forbid before each step and feeds it the
tokens vLLM wrote; the ``vllm:`` model and the HTTP model read the tokens (or text pieces) an
engine returned through it. Tokens are whatever the caller reads in (ids, or text pieces over
HTTP); ``is_space`` and ``is_wordless`` say which are whitespace and which hold no word.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TurnRules:
    """What one row's turn obeys (see the module's docstring)."""

    end: Hashable | None  #: the end-of-conversation token (None: the model has none)
    stops: frozenset = frozenset()  #: tokens that close the turn (end of turn, end of sequence)
    suppress_end: bool = False  #: the end token is never sampled
    end_threshold: float | None = None  #: the turn ends the conversation once P(end) at its start reaches this
    want_end_prob: bool = False  #: record P(end) at the start of the content
    content_offset: int = 0  #: opening whitespace tokens expected before the content
    budget: int | None = None  #: the most tokens the turn may hold

    @property
    def reads_end_prob(self) -> bool:
        return self.end is not None and (self.want_end_prob or self.end_threshold is not None)


@dataclass
class TurnReader:
    """One row's turn as it is written, token by token."""

    rules: TurnRules
    is_space: Callable[[Any], bool]
    is_wordless: Callable[[Any], bool] | None = None
    tokens: list = field(default_factory=list)  #: the turn's tokens (no stop or end token)
    end_prob: float | None = None  #: P(end) where the content starts, when read
    ended: bool = False  #: the conversation ends here (end token as the whole turn, or threshold reached)
    finished: bool = False  #: a stop or end token closed the turn (else its budget or the engine's ran out)
    closed_by_end: bool = False  #: an end token after some text closed the turn
    cut: bool = False  #: the row's own budget ran out
    started: bool = False  #: a token that is not whitespace was written
    worded: bool = False  #: a token holding a letter or digit was written
    measured: bool = False  #: the content's start was reached (P(end) read there, or not available)

    @property
    def done(self) -> bool:
        return self.finished or self.cut

    @property
    def awaiting_start(self) -> bool:
        """Whether P(end) is still to be read (the content has not started)."""
        return self.rules.reads_end_prob and not self.done and not self.measured and not self.started

    def starts_here(self, token: Any = None) -> bool:
        """Whether the content starts at this position: the opening is written, or ``token`` (what
        was sampled here, when known) ends the turn or is not whitespace."""
        if not self.awaiting_start:
            return False
        if len(self.tokens) >= self.rules.content_offset:
            return True
        return token is not None and (token == self.rules.end or not self.is_space(token))

    def threshold_reached(self, end_prob: float | None) -> bool:
        threshold = self.rules.end_threshold
        return threshold is not None and end_prob is not None and end_prob >= threshold

    def forbids_end(self) -> bool:
        """Whether the end token must not be sampled at the next position."""
        return self.rules.end is not None and self.rules.suppress_end

    def forbids_banned(self) -> bool:
        """Whether the banned first words must not be sampled at the next position."""
        return not self.worded

    def measure(self, end_prob: float | None) -> bool:
        """Record P(end) where the content starts (None: not available); whether it ends the
        conversation there (the threshold is reached: the turn is the end token)."""
        self.measured, self.end_prob = True, end_prob
        if self.threshold_reached(end_prob):
            self.ended = self.finished = True
        return self.ended

    def read(self, token: Any, end_prob: float | None = None) -> Any:
        """Take the token sampled at this position, with P(end) of the raw logits here when
        known. Returns the token the turn has there: the end token when P(end) at the content's
        start reached the threshold, else ``token``."""
        if self.done:
            raise ValueError("the turn is already over")
        if self.starts_here(token) and self.measure(end_prob):
            return self.rules.end
        if token == self.rules.end and token is not None:
            self.finished = True
            self.ended = not self.started
            self.closed_by_end = self.started
            return token
        if token in self.rules.stops:
            self.finished = True
            return token
        self.tokens.append(token)
        if not self.is_space(token):
            self.started = True
        if self.is_wordless is None or not self.is_wordless(token):
            self.worded = True
        if self.rules.budget is not None and len(self.tokens) >= self.rules.budget:
            self.cut = True
        return token

    def read_all(self, tokens: Iterable[Any], end_probs: Callable[[int], float | None] | None = None) -> TurnReader:
        """Read the tokens an engine returned (``end_probs(step)``: P(end) at that position),
        stopping where the turn is over. Returns itself."""
        for step, token in enumerate(tokens):
            self.read(token, end_probs(step) if end_probs is not None and self.starts_here(token) else None)
            if self.done:
                break
        return self


def table(flags: list[bool], *, beyond: bool = False) -> Callable[[int], bool]:
    """A token-id predicate from a per-id table; ids past the table (a model's padded vocabulary)
    get ``beyond``."""
    size = len(flags)
    return lambda token: flags[token] if token < size else beyond
