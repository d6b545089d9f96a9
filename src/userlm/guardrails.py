"""The four guardrails of the UserLM-8b authors' generation configuration.

1. **First-token filter** -- a user turn may not start with one of ``first_words`` (default
   "I", "You", "Here", any case). The first word is the leading run of letters after any
   leading quotes, brackets, dashes or spaces, so "I'm", "i need" and '"Here is' are refused
   while "If", "Your" and "Hereby" pass. Local models enforce it on the first generated content
   token (a logits processor); every provider's drafts are also checked here, which catches a
   banned word spelt over several tokens.
2. **Termination control** -- ``<|endconversation|>`` is refused until the user has written
   ``min_turns`` turns (``None``: never, as in the authors' simulations). With
   ``end_threshold`` set, the conversation ends when the model's probability of the end token
   at the start of a user turn reaches it.
3. **Length bounds** -- a turn has between ``min_words`` and ``max_words`` words
   (whitespace-separated); ``None`` switches a bound off.
4. **Verbatim repetition** -- see :func:`normalise` for what counts as the same text. A draft is
   refused when its normalised text equals that of an earlier user turn of the conversation
   (``repeats_turn``), or when it copies the intent (``copies_intent``): it contains a run of
   at least ``copy_run_words`` consecutive intent words (or the whole intent, if shorter), or
   the whole draft, of at least ``min_copy_words`` words, is a run of intent words.

After ``max_attempts`` refused drafts the conversation ends with ``guardrail_exhausted``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

#: Rejection reasons, as recorded in the conversation record.
#: why a guardrail refused a draft (``Rejection.reason`` in the records)
RefusalReason = Literal["empty", "premature_end", "first_word", "too_short", "too_long", "repeats_turn", "copies_intent"]

_LEADING_NOISE = re.compile(r"^[\W_]+", re.UNICODE)
_FIRST_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class GuardrailConfig:
    """Settings of the four guardrails; each is on by default."""

    first_words: tuple[str, ...] = ("I", "You", "Here")  #: banned first words (empty: filter off)
    min_turns: int | None = None  #: user turns before ending is allowed (None: never)
    end_threshold: float | None = None  #: end when P(<|endconversation|>) >= this
    min_words: int | None = 3  #: fewest words in a turn (None: no bound)
    max_words: int | None = 25  #: most words in a turn (None: no bound)
    block_repetition: bool = True  #: refuse repeats of earlier turns and copies of the intent
    copy_run_words: int = 12  #: a run of this many intent words in a turn is a copy
    min_copy_words: int = 5  #: a turn this long made only of intent words is a copy
    max_attempts: int = 8  #: refused drafts before the conversation ends

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_words", tuple(w.strip() for w in self.first_words if w.strip()))
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if (self.min_words is not None and self.min_words < 0) or (self.min_turns is not None and self.min_turns < 0):
            raise ValueError("min_words and min_turns must be 0 or more")
        if self.max_words is not None and self.max_words < 1:
            raise ValueError("max_words must be at least 1")
        if self.end_threshold is not None and not 0.0 < self.end_threshold <= 1.0:
            raise ValueError("end_threshold must be in (0, 1]")
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")

    def end_allowed(self, user_turns_so_far: int) -> bool:
        """Whether the user may end the conversation instead of writing its next turn."""
        floor = self.min_turns
        if floor is None and self.end_threshold is not None:
            floor = 1  # asking for a threshold means asking for ends: allowed after the first turn
        return floor is not None and user_turns_so_far >= floor

    def to_dict(self) -> dict:
        return asdict(self)


OFF = GuardrailConfig(first_words=(), min_turns=0, min_words=None, max_words=None, block_repetition=False)


def normalise(text: str) -> str:
    """Canonical form for repetition checks: NFKC, case-folded, every run of characters that
    are not letters or digits replaced by one space, stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", text).strip()


def first_word(text: str) -> str:
    """The leading run of letters, after leading punctuation and spaces."""
    stripped = _LEADING_NOISE.sub("", text)
    match = _FIRST_WORD.match(stripped)
    return match.group(0) if match else ""


def starts_with_banned_word(text: str, banned: Sequence[str]) -> bool:
    word = first_word(text).casefold()
    return bool(word) and word in {b.casefold() for b in banned}


def copies_intent(draft: str, intent: str | None, config: GuardrailConfig) -> bool:
    if not intent:
        return False
    d = normalise(draft).split()
    i = normalise(intent).split()
    if not d or not i:
        return False
    run = min(config.copy_run_words, len(i))
    longest = _longest_common_run(d, i)
    return longest >= run or (len(d) >= config.min_copy_words and longest == len(d))


def _longest_common_run(a: list[str], b: list[str]) -> int:
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                if current[j] > best:
                    best = current[j]
        previous = current
    return best


@dataclass
class DraftCheck:
    """What the guardrails make of one draft."""

    accepted: bool
    ended: bool = False  #: the draft ends the conversation (allowed)
    reason: RefusalReason | None = None


def check_draft(
    text: str,
    *,
    ended: bool,
    intent: str | None,
    earlier_user_turns: Sequence[str],
    config: GuardrailConfig,
) -> DraftCheck:
    """Decide whether a user-turn draft is kept, and if not, why."""
    if ended:
        if config.end_allowed(len(earlier_user_turns)):
            return DraftCheck(accepted=True, ended=True)
        return DraftCheck(accepted=False, reason="premature_end")
    if not text.strip():
        return DraftCheck(accepted=False, reason="empty")
    if config.first_words and starts_with_banned_word(text, config.first_words):
        return DraftCheck(accepted=False, reason="first_word")
    words = len(text.split())
    if config.min_words is not None and words < config.min_words:
        return DraftCheck(accepted=False, reason="too_short")
    if config.max_words is not None and words > config.max_words:
        return DraftCheck(accepted=False, reason="too_long")
    if config.block_repetition:
        norm = normalise(text)
        if any(norm == normalise(t) for t in earlier_user_turns):
            return DraftCheck(accepted=False, reason="repeats_turn")
        if copies_intent(text, intent, config):
            return DraftCheck(accepted=False, reason="copies_intent")
    return DraftCheck(accepted=True)
