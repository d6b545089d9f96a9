"""Task suites for evaluating assistants: GSM8K, HumanEval, Lost-in-Conversation sharded
instructions, and custom tasks with a scorer of your own.

Every task knows its full text (the single-turn baseline), its shards (one piece of the task per
turn), the intent a simulated user pursues, how to find an answer attempt in an assistant reply,
and how to score one. Tasks without published shards are cut into sentences: the sentence that
asks comes first, the details follow in their order.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...files import json_lines
from .sandbox import Limits, run_tests

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_CODE_BLOCK = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)```", re.S)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Task:
    """One task of a suite."""

    id: str
    suite: str  #: gsm8k, humaneval, sharded, custom
    text: str  #: the whole task, as given in one turn
    shards: list[str]
    reference: dict[str, Any] = field(default_factory=dict)
    binary: bool = True  #: scores are 0 or 1 (the conversation stops once solved)
    scorer: Callable[[Task, str], float] | None = None  #: custom scorers

    @property
    def intent(self) -> str:
        return f"You are a user chatting with an assistant to get this task done:\n{self.text}"


# ---- answer extraction -------------------------------------------------------------------

def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "").replace("$", "").rstrip(".") if numbers else None


def code_defining(text: str, entry_point: str) -> str | None:
    """The last code block (or, lacking blocks, the whole reply) that defines ``entry_point``."""
    blocks = _CODE_BLOCK.findall(text) or [text]
    for block in reversed(blocks):
        if re.search(rf"^\s*def {re.escape(entry_point)}\s*\(", block, re.M):
            return block
    return None


def extract_answer(task: Task, reply: str) -> str | None:
    """The answer attempt in an assistant reply, or None when it attempted none."""
    if task.suite == "gsm8k":
        return last_number(reply)
    if task.suite == "humaneval":
        return code_defining(reply, task.reference["entry_point"])
    return reply.strip() or None


# ---- scoring -----------------------------------------------------------------------------

def _same_number(a: str, b: str) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


@dataclass(frozen=True)
class Grade:
    """A score and how it was reached."""

    value: float  #: in [0, 1]
    isolation: str | None = None  #: where code ran (``bubblewrap`` or ``audit-hook``); None when none ran
    detail: str = ""  #: why code failed its tests


def grade(task: Task, answer: str, limits: Limits = Limits()) -> Grade:
    """Score an extracted answer in [0, 1]. Code runs only in the sandbox, and passes only on the
    trusted harness's word that every test ran (see :func:`~userlm.evaluation.assistants.sandbox.run_tests`)."""
    if task.scorer is not None:
        return Grade(float(task.scorer(task, answer)))
    if task.suite == "gsm8k":
        return Grade(float(_same_number(answer, task.reference["answer"])))
    if task.suite == "humaneval":
        ref = task.reference
        result = run_tests(answer, ref["entry_point"], task.text, ref["test"], limits)
        return Grade(float(result.passed), result.isolation, result.detail[:500])
    if task.suite == "sharded" and task.reference.get("kind") == "translation":
        import sacrebleu

        return Grade(min(1.0, sacrebleu.sentence_bleu(answer, [task.reference["document_en"]]).score / 100.0))
    raise ValueError(f"no scorer for {task.suite} task {task.id}")


def score(task: Task, answer: str, limits: Limits = Limits()) -> float:
    """:func:`grade`'s value alone."""
    return grade(task, answer, limits).value


# ---- loaders -----------------------------------------------------------------------------

def _question_first(text: str) -> list[str]:
    sentences = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    asks = [s for s in sentences if s.endswith("?")]
    first = asks[-1] if asks else sentences[-1]
    return [first] + [s for s in sentences if s is not first]


def load_gsm8k(path: str | Path) -> list[Task]:
    tasks = []
    for n, row in enumerate(_jsonl(path, ("question", "answer"), "gsm8k"), 1):
        gold = row["answer"].split("####")[-1].strip().replace(",", "")
        tasks.append(Task(id=f"gsm8k-{n}", suite="gsm8k", text=row["question"], shards=_question_first(row["question"]),
                          reference={"answer": gold, "solution": row["answer"]}))
    return tasks


def load_humaneval(path: str | Path) -> list[Task]:
    tasks = []
    for row in _jsonl(path, ("task_id", "prompt", "entry_point", "test"), "humaneval"):
        prompt = row["prompt"]
        head, _, doc = prompt.partition('"""') if '"""' in prompt else prompt.partition("'''")
        parts = [p.strip() for p in re.split(r"\n\s*\n|(?=>>>)", doc.rstrip().rstrip('"').rstrip("'")) if p.strip()]
        shards = [f"Write a Python function:\n{head.strip()}"] + parts
        tasks.append(Task(id=row["task_id"], suite="humaneval", text=prompt, shards=shards,
                          reference={k: row.get(k) for k in ("entry_point", "test", "canonical_solution")}))
    return tasks


_SHARD_INSTRUCTIONS = {
    "translation": ("Translate this German text into English:\n", "Here is more of the German text; translate everything so far:\n"),
}


def load_sharded(path: str | Path) -> list[Task]:
    """Lost-in-Conversation records: ``{task_id, task, shards: [{shard_id, shard}], ...reference fields}``."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc
        raise UserError(f"{path}: not a readable JSON list of sharded tasks ({reason}).") from None
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: expected a non-empty JSON list of sharded tasks.")
    tasks = []
    for n, row in enumerate(rows, 1):
        try:
            shards = [s["shard"] for s in sorted(row["shards"], key=lambda s: s["shard_id"])]
            kind = row["task"]
        except (KeyError, TypeError):
            raise UserError(f"{path}: record {n} lacks task/shards [{{shard_id, shard}}].") from None
        first, more = _SHARD_INSTRUCTIONS.get(kind, ("", ""))
        shards = [first + shards[0]] + [more + s for s in shards[1:]]
        reference = {k: v for k, v in row.items() if k not in ("shards",)}
        reference["kind"] = kind
        text = first + "\n".join(s["shard"] for s in sorted(row["shards"], key=lambda s: s["shard_id"]))
        tasks.append(Task(id=str(row["task_id"]), suite="sharded", text=text, shards=shards, reference=reference,
                          binary=kind != "translation"))
    return tasks


def load_custom(path: str | Path, scorer: Callable[[Task, str], float]) -> list[Task]:
    """JSONL of ``{id, prompt, shards?: [..], binary?: bool, ...}``; ``scorer(task, answer) -> float``."""
    tasks = []
    for n, row in enumerate(_jsonl(path), 1):
        if "prompt" not in row:
            raise UserError(f'{path}:{n}: a custom task needs a "prompt" field.')
        tasks.append(Task(id=str(row.get("id", n)), suite="custom", text=row["prompt"],
                          shards=row.get("shards") or _question_first(row["prompt"]),
                          reference=row, binary=row.get("binary", True), scorer=scorer))
    return tasks


def _jsonl(path: str | Path, needs: tuple[str, ...] = (), suite: str = "") -> list[dict]:
    """The rows of a JSONL file (gzipped when it ends in .gz), each holding the fields ``needs``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the tasks file.")
    if not path.is_file():
        raise UserError(f"{path}: no such file.")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    n = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, row in json_lines(path, f):
                missing = [k for k in needs if not isinstance(row, dict) or k not in row]
                if missing:
                    raise UserError(f"{path}:{n}: a {suite} task needs {', '.join(missing)}; is this a {suite} file?")
                rows.append(row)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        kind = "gzip file" if path.suffix == ".gz" else "file"
        raise UserError(f"{path}: not a readable {kind} ({exc}).") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}:{n + 1}: not UTF-8 text; give a JSONL file.") from None
    if not rows:
        raise UserError(f"{path} holds no tasks; give a file with one JSON task per line.")
    return rows


SUITES = ("gsm8k", "humaneval", "sharded", "custom")


#: suites that ship with the package (``userlm.data``): the name alone runs them
BUILTIN_SUITES = ("gsm8k", "humaneval", "sharded")


def load_suite(spec: str, scorer: str | None = None) -> list[Task]:
    """``gsm8k:PATH``, ``humaneval:PATH``, ``sharded:PATH`` or ``custom:PATH`` (with ``scorer``);
    ``gsm8k``, ``humaneval`` or ``sharded`` alone is the built-in copy (``userlm.data``)."""
    kind, _, path = spec.partition(":")
    if kind in BUILTIN_SUITES and not path:
        from ...data import builtin_path

        path = str(builtin_path(kind))
    if kind not in SUITES or not path:
        raise UserError(f"unknown task suite {spec!r}; use one of {', '.join(BUILTIN_SUITES)} (built in) or "
                        + ", ".join(f"{s}:PATH" for s in SUITES) + ".")
    if kind == "gsm8k":
        return load_gsm8k(path)
    if kind == "humaneval":
        return load_humaneval(path)
    if kind == "sharded":
        return load_sharded(path)
    if scorer is None:
        raise UserError("custom tasks need --scorer path/file.py:function (called as function(task, answer) -> score).")
    from ...models.doubles.function import import_function

    return load_custom(path, import_function(scorer))
