"""Robustness scenarios for user simulators, and the data they draw on.

* **Role adherence**: the user's intent is to get a question answered; the assistant hedges and
  asks the user what *they* think. The user succeeds when it neither answers its own question nor
  slips into the assistant's role. With the options known (multiple choice) a rule decides;
  otherwise the judge does.
* **Intent adherence**: the assistant tries to steer the user to another topic; the user succeeds
  when it stays on its intent (judged).

Question sets: ``fixture:mcq`` and ``fixture:open`` (small, written for this project, offline),
``commonsense_qa`` and ``natural_questions`` (the public sets, through ``datasets``), or a local
JSONL file of ``{"id", "question", "options"?, "answer"?}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from ...errors import UserError
from ...faults import role_inversion
from ...user import derive_seed
from ..text import content_words

QUESTION_SETS = ("fixture:mcq", "fixture:open", "commonsense_qa", "natural_questions")
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    options: tuple[str, ...] = ()  #: empty for open questions
    answer: str | None = None
    source: str = ""

    def intent(self) -> str:
        if self.options:
            listed = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(self.options))
            return (f"You are a user chatting with an assistant to get the answer to this multiple-choice question:\n"
                    f"{self.question}\n{listed}")
        return f"You are a user chatting with an assistant to find out: {self.question}"


def package_lines(name: str) -> list[str]:
    text = files("userlm.evaluation").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _from_rows(rows: Iterable[tuple[str, dict]], source: str) -> list[Question]:
    out = []
    for where, row in rows:
        try:
            out.append(Question(id=str(row["id"]), question=str(row["question"]), options=tuple(map(str, row.get("options") or ())),
                                answer=None if row.get("answer") is None else str(row["answer"]), source=source))
        except (KeyError, TypeError) as exc:
            raise UserError(f"{where}: not a question row (missing {exc}); give id, question and optionally options and answer.") from None
    return out


def load_questions(spec: str, *, limit: int | None = None) -> list[Question]:
    """Questions from a fixture, a public set (through ``datasets``) or a local JSONL file."""
    if spec in ("fixture:mcq", "fixture:open"):
        name = "mcq.jsonl" if spec == "fixture:mcq" else "open_questions.jsonl"
        rows = [(f"{spec}:{n}", json.loads(line)) for n, line in enumerate(package_lines(name), 1)]
        return _from_rows(rows, spec)[:limit]
    if spec in ("commonsense_qa", "natural_questions"):
        return _hub_questions(spec, limit)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"{spec}: not a question file nor one of {', '.join(QUESTION_SETS)}.")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{n}: not valid JSON ({exc.msg}); write one JSON object per line.") from None
    return _from_rows(rows, str(path))[:limit]


def _hub_questions(name: str, limit: int | None) -> list[Question]:
    from datasets import load_dataset

    hub = {"commonsense_qa": ("tau/commonsense_qa", "validation"), "natural_questions": ("google-research-datasets/nq_open", "validation")}
    repo, split = hub[name]
    try:
        data = load_dataset(repo, split=split)
    except Exception as exc:  # offline, renamed, gated
        raise UserError(f"{name}: cannot load {repo} ({str(exc).splitlines()[0]}); download it first or use fixture:mcq / fixture:open.") from None
    out = []
    for n, row in enumerate(data):
        if limit is not None and n >= limit:
            break
        if name == "commonsense_qa":
            labels, texts = row["choices"]["label"], row["choices"]["text"]
            answer = texts[labels.index(row["answerKey"])] if row.get("answerKey") in labels else None
            out.append(Question(str(row.get("id", n)), row["question"], tuple(texts), answer, name))
        else:
            out.append(Question(f"nq-{n}", row["question"], (), (row.get("answer") or [None])[0], name))
    return out


def pick(lines: list[str], *parts: object) -> str:
    """A deterministic choice among ``lines`` for an item (same item, same line, every run)."""
    return lines[derive_seed(*parts) % len(lines)]


# --- rule checks ---------------------------------------------------------------------------

# option letters are matched in capitals only, so "I think a fridge" is not a pick of (A)
_PICKS = re.compile(r"(?i:answer(?: is|'s)?|it'?s|go with|pick|choose|i think|i'?d say|probably|must be)\s*:?\s*\(?([A-J])\)?(?![\w'])")
_BARE = re.compile(r"^\W*\(?([A-J])\)?\W*$")


@dataclass
class RoleCheck:
    answered_itself: bool
    assistant_voice: bool
    mentioned: list[str] = field(default_factory=list)  #: options the turn names

    @property
    def adhered(self) -> bool:
        return not (self.answered_itself or self.assistant_voice)


def mentioned_options(turn: str, options: tuple[str, ...]) -> list[str]:
    """Options whose content words all appear in the turn."""
    said = content_words(turn)
    return [o for o in options if content_words(o) and content_words(o) <= said]


def role_rule_check(turn: str, question: Question) -> RoleCheck:
    """For multiple-choice questions: did the user pick an answer itself, or talk like an assistant?

    Stating exactly one option (outside a question: "is it the cupboard?" still asks), or a letter
    as the answer ("it's B"), counts as answering; naming several options (repeating the choices
    back) does not.
    """
    statements = " ".join(p for p in re.split(r"(?<=[.!?\n])", turn) if not p.strip().endswith("?"))
    mentioned = mentioned_options(statements, question.options)
    letters = {m.upper() for m in _PICKS.findall(statements)} | {m.upper() for m in _BARE.findall(turn.strip())}
    letters = {x for x in letters if LETTERS.index(x) < len(question.options)}
    answered = len(mentioned) == 1 or len(letters) == 1
    return RoleCheck(answered_itself=answered, assistant_voice=role_inversion(turn), mentioned=mentioned)


def transcript(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages)
