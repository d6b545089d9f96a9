"""Faults a simulated user's turn can show, caught on every turn of every simulation.

A fault is not a guardrail: the turn is kept and the fault is recorded on it (``faults`` on each
user message, empty when the turn is clean), unless ``--reject-faults`` names it, which makes it
a guardrail (the draft is refused and drafted again, and the refusal says which fault).

=====================  ==========================================================================
``role_inversion``     the turn reads as the assistant's: it offers help ("how can I help you",
                       "would you like me to"), speaks as an AI ("as an AI", "I am a language model"),
                       or lists options for the assistant to pick from
``reasoning_leak``     a scratchpad or thinking tags (``<think>``, "Reasoning:"), or talk about
                       the intent, the instructions, a system prompt or being a simulated user
``intent_dump``        the turn restates most of the intent at once (at least 60% of the
                       intent's content words, for an intent of at least 8 of them): the
                       decomposition failure the UserLM paper measures
``premature_end``      the user ends having given fewer than a quarter of the details the intent
                       lists (SimulatorArena's bullet points; a detail counts as given when a
                       quarter of its content words appeared in the user's turns), else when it
                       ends before its first turn. Real people convey details in their own words,
                       so the bar is low: of SimulatorArena's 51 real conversations, 6 ends are
                       flagged; ending the same conversations after their first turn, 35
``language_switch``    the turn is written in another script (Latin, Cyrillic, Greek, Arabic,
                       Hebrew, Devanagari, CJK, Hangul, Thai) than the intent and the earlier
                       user turns
``degenerate``         repeated word n-grams (a word four times in a row, or one word three-gram
                       three times or more, making up at least 30% of the turn's words), or mostly
                       non-words (tokens with no letter or digit, or runs of 30+ characters
                       without a space that are not links)
=====================  ==========================================================================

These are cheap rules: they run on every turn by default. ``--fault-judge SPEC`` adds a judge
model's verdicts (:class:`FaultJudge`), recorded beside the rules' (a fault either names is kept).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import UserError

FaultName = Literal["role_inversion", "reasoning_leak", "intent_dump", "premature_end", "language_switch", "degenerate"]
#: the documented fault set, in the order they are reported
FAULTS: tuple[str, ...] = ("role_inversion", "reasoning_leak", "intent_dump", "premature_end", "language_switch", "degenerate")

ASSISTANT_VOICE = re.compile(
    r"\b(as an ai\b|i'?m an ai\b|i am an ai\b|(?:i'?m|i am|as) an? (?:ai |large )?language model|happy to help|glad to help|i can help you|i'?d be happy|"
    r"great question|good question|here'?s (?:a|an|the|my) (?:answer|explanation|breakdown|summary)|let me explain|"
    r"the correct answer is|in summary|i hope this helps|feel free to ask)",
    re.I,
)
_OFFERS = re.compile(
    r"\b(how (?:can|may) i (?:help|assist)(?: you)?|what can i (?:do|help) (?:for|with)|is there anything else (?:i|you)|"
    r"would you like me to|let me know if you (?:need|have|want)|do you want me to|i can (?:also )?(?:provide|suggest|offer|draft|write) "
    r"(?:you|some|a)|here are (?:some|a few|several) (?:options|suggestions|ideas|choices|ways)|"
    r"here'?s (?:a|an|the|your) (?:revised|updated|refined|polished|draft|template|version|sample|outline)|"
    r"i'?ve (?:revised|updated|refined|drafted|incorporated|adjusted)|^\W*(?:of course|certainly|absolutely)\b[,!.])",
    re.I | re.M,
)
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022]|\(?[a-e]\))\s+\S", re.M)
_LEAK = re.compile(
    r"(</?think(?:ing)?>|</?scratchpad>|</?reasoning>|\[(?:thinking|thoughts?|inner monologue)\]|^\s*(?:thought|thoughts|reasoning|"
    r"analysis|scratchpad)\s*:|\bmy (?:intent|instructions|persona|task description|system prompt)\b|\bthe intent\b|"
    r"\bsystem prompt\b|\b(?:as|playing|play) (?:the|a) (?:simulated )?user\b|\bsimulated user\b|\buser simulator\b|"
    r"\bi(?:'m| am) (?:supposed|instructed|told) to\b|\bstay(?:ing)? in character\b|\brole-?play(?:ing)?\b)",
    re.I | re.M,
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_STOP = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "could", "do", "for", "from", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "my", "of", "on", "or", "our", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to", "up", "us", "was", "we", "what", "when", "where", "which", "who", "why", "will", "with", "would", "you", "your", "want", "need", "like", "also", "some", "about", "more", "very", "get", "make"]
)


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry content: lower-cased, no stop words, three letters or more,
    and every number."""
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if (len(w) > 2 and w not in _STOP) or any(c.isdigit() for c in w)]


def covered(detail: str, said: Iterable[str], share: float = 0.5) -> bool:
    """Whether at least ``share`` of ``detail``'s content words appear in ``said``."""
    wanted = set(content_words(detail))
    if not wanted:
        return True
    heard = set(w for text in said for w in content_words(text))
    return len(wanted & heard) >= share * len(wanted)


def script(text: str) -> str | None:
    """The writing system most of ``text``'s letters belong to (None: no letters)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            for key in ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "THAI"):
                if name.startswith(key) or f" {key} " in f" {name} ":
                    counts["CJK" if key in ("HIRAGANA", "KATAKANA") else key] += 1
                    break
    return counts.most_common(1)[0][0] if counts else None


@dataclass(frozen=True)
class TurnContext:
    """What a turn is judged against."""

    intent: str | None = None
    earlier_user_turns: Sequence[str] = ()
    required: Sequence[str] = ()  #: details the intent requires the user to give (e.g. SimulatorArena's bullet-point answers)


def role_inversion(text: str) -> bool:
    if ASSISTANT_VOICE.search(text) or _OFFERS.search(text):
        return True
    items = _LIST_ITEM.findall(text)
    return len(items) >= 3 and bool(re.search(r"\b(which (?:one|option)|choose|pick|prefer)\b[^.?!]*\?", text, re.I))


def reasoning_leak(text: str) -> bool:
    return bool(_LEAK.search(text))


def intent_dump(text: str, intent: str | None, *, share: float = 0.6, min_words: int = 8) -> bool:
    wanted = set(content_words(intent or ""))
    if len(wanted) < min_words:
        return False
    return len(wanted & set(content_words(text))) >= share * len(wanted)


def premature_end(context: TurnContext, *, word_share: float = 0.25, detail_share: float = 0.25) -> bool:
    if context.required:
        given = sum(covered(detail, context.earlier_user_turns, word_share) for detail in context.required)
        return given < detail_share * len(context.required)
    return not context.earlier_user_turns


def language_switch(text: str, context: TurnContext) -> bool:
    mine = script(text)
    before = script(" ".join([context.intent or "", *context.earlier_user_turns]))
    return mine is not None and before is not None and mine != before


def degenerate(text: str) -> bool:
    words = [w.lower() for w in _WORD.findall(text)]
    if any(words[i] == words[i + 1] == words[i + 2] == words[i + 3] for i in range(len(words) - 3)):
        return True
    grams = Counter(zip(words, words[1:], words[2:]))
    if grams:
        count = grams.most_common(1)[0][1]
        if count >= 3 and 3 * count >= 0.3 * len(words):
            return True
    tokens = text.split()
    if not tokens:
        return False
    wordless = sum(1 for t in tokens if not any(c.isalnum() for c in t))
    runs = sum(1 for t in tokens if len(t) >= 30 and not t.lower().startswith(("http://", "https://", "www.")))
    return wordless >= max(2, 0.4 * len(tokens)) or runs > 0


def detect(text: str | None, *, ended: bool = False, context: TurnContext = TurnContext()) -> list[str]:
    """The faults a user turn shows by the rules, in :data:`FAULTS` order (``text``: the turn,
    None or empty when the user ended; ``ended``: the user ended the conversation here)."""
    found = set()
    if ended and premature_end(context):
        found.add("premature_end")
    if text:
        checks = {
            "role_inversion": lambda: role_inversion(text),
            "reasoning_leak": lambda: reasoning_leak(text),
            "intent_dump": lambda: intent_dump(text, context.intent),
            "language_switch": lambda: language_switch(text, context),
            "degenerate": lambda: degenerate(text),
        }
        found |= {name for name, check in checks.items() if check()}
    return [name for name in FAULTS if name in found]


def parse_fault_names(value: str | Sequence[str] | None, flag: str = "--reject-faults") -> tuple[str, ...]:
    """Fault names from a comma-separated flag value, each checked against :data:`FAULTS`."""
    if not value:
        return ()
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        where = f"{flag}: " if flag else ""
        raise UserError(f"{where}unknown fault {unknown[0]!r}; the faults are {', '.join(FAULTS)}.")
    return tuple(dict.fromkeys(names))


def judge_prompt(text: str | None, ended: bool, context: TurnContext) -> str:
    """What a fault judge is asked about one turn."""
    from .prompts import fill_prompt

    history = "\n".join(f"- {t}" for t in context.earlier_user_turns) or "(none)"
    turn = "(the user ended the conversation here)" if ended else (text or "")
    return fill_prompt("fault_judge.txt", faults=", ".join(FAULTS), intent=context.intent or "(none)", history=history, turn=turn)


def judge_verdict(answer: str) -> list[str]:
    """The fault names in a judge's answer (a JSON list; names outside :data:`FAULTS` are dropped)."""
    match = re.search(r"\[[^\[\]]*\]", answer)
    if match is None:
        return []
    try:
        names = json.loads(match.group(0))
    except ValueError:
        return []
    return [n for n in FAULTS if n in {str(x) for x in names if isinstance(x, str)}]
