"""Evaluate an assistant on tasks reaching it in different ways (``userlm eval-assistant``).

Modes, side by side on the same tasks:

* ``full`` -- the whole task in one turn (the single-turn baseline);
* ``concat`` -- all shards in one turn;
* ``sharded`` -- one shard per turn, first shard first, the rest in order (or rephrased by a
  chat model as a user would say them);
* ``simulated`` -- a user model gets the task as its intent and talks to the assistant under
  the guardrails.

After every assistant reply an answer attempt is looked for (last number for math, the code
block defining the entry point for code, the reply for translation; or a chat model as
extractor) and scored; the conversation ends when the task is solved, when the user ends, or at
the turn limit. Every attempt and its score is an event on that reply in the record.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...conversation import AnswerAttempt, Conversation, Usage, token_totals
from ...errors import UserError
from ...faults import FAULTS, covered
from ...files import write_text
from ...guardrails import OFF as GUARDRAILS_OFF
from ...guardrails import GuardrailConfig
from ...intents import Intent
from ...models.base import ChatModel, UserDraft, UserModel, UserTurnRequest
from ...prompts import fill_prompt
from ...simulation import RunSettings, simulate_async
from ...user import FaultPolicy, SimulatedUser
from ..metrics import MeanCI, aptitude_unreliability, describe, mean_ci, paired_difference_ci
from ..tables import Footnotes, number, published_rows
from ..text import content_words, words
from .results import AssistantReport, ConversationResult, ModeResult
from .tasks import Task, extract_answer, grade

MODES = ("full", "concat", "sharded", "simulated")


class TaskUser:
    """Plays the user by the book: the task's turns for a mode, then the end."""

    def __init__(self, tasks: dict[str, Task], mode: str, rephrase: ChatModel | None = None):
        self.tasks, self.mode, self.rephrase = tasks, mode, rephrase
        self.name = f"task:{mode}" + (f"+rephrased:{rephrase.name}" if rephrase else "")

    def turns(self, task: Task) -> list[str]:
        if self.mode == "full":
            return [task.text]
        if self.mode == "concat":
            return ["\n".join(f"- {s}" for s in task.shards)]
        return task.shards

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        # the conversation is "<task id>#<sample>" (the run's intents are the tasks, by id)
        task = self.tasks[(request.conversation_key or "").rpartition("#")[0]]
        turns = self.turns(task)
        index = sum(1 for m in request.messages if m["role"] == "user")
        if index >= len(turns):
            return UserDraft(text="", ended=True)
        text = turns[index]
        if self.rephrase is not None and self.mode == "sharded" and index > 0:
            chat = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in request.messages)
            prompt = fill_prompt("rephrase_shard.txt", chat=chat, information=text)
            said = await self.rephrase.reply([{"role": "user", "content": prompt}], seed=request.seed)
            # the rephrasing model speaks for the user: its tokens are the user side's
            return UserDraft(text=said.text.strip() or text, prompt_tokens=said.prompt_tokens, completion_tokens=said.completion_tokens)
        return UserDraft(text=text)


@dataclass
class EvalSettings:
    modes: tuple[str, ...] = MODES
    samples: int = 1
    max_turns: int = 8
    seed: int = 0
    concurrency: int = 32
    sandbox_parallel: int = 2  #: code runs in parallel
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)
    faults: FaultPolicy = field(default_factory=FaultPolicy)  #: how the simulated user's faults are caught


async def evaluate(
    tasks: list[Task], assistant: ChatModel, out: str | Path, *, user_model: UserModel | None = None, extractor: ChatModel | None = None,
    rephrase: ChatModel | None = None, settings: EvalSettings = EvalSettings(), progress: bool = True,
) -> AssistantReport:
    """Run every mode, write transcripts, ``assistant.json`` and ``assistant.md``; return the report."""
    out = Path(out)
    by_id: dict[str, Task] = {}
    for t in tasks:
        if t.id in by_id:
            raise UserError(f"two tasks have the id {t.id!r} ({by_id[t.id].suite} and {t.suite}); give every task its own id.")
        by_id[t.id] = t
    sandbox = asyncio.Semaphore(settings.sandbox_parallel)

    async def after_reply(conv: Conversation) -> bool:
        task = by_id[conv.metadata["task_id"]]
        reply = conv.messages[-1]
        answer = await _extract(task, reply.content, extractor, conv)
        if answer is None:
            return False
        async with sandbox:
            result = await asyncio.to_thread(grade, task, answer)
        # for code: under which isolation it ran, and why it failed
        event = AnswerAttempt(answer=answer[:4000], score=result.value, isolation=result.isolation,
                              detail=(result.detail or None) if result.isolation is not None else None)
        reply.events = [*(reply.events or []), event]
        return task.binary and result.value >= 1.0

    records: dict[str, list[Conversation]] = {}
    for mode in settings.modes:
        if mode == "simulated":
            if user_model is None:
                raise ValueError("the simulated mode needs a user model")
            user = SimulatedUser(user_model, settings.guardrails, settings.faults)
        else:
            user = SimulatedUser(TaskUser(by_id, mode, rephrase), GUARDRAILS_OFF, FaultPolicy(check=False))
        intents = [Intent(id=t.id, text=t.intent, metadata={"task_id": t.id, "suite": t.suite, "mode": mode}) for t in tasks]
        run = await simulate_async(
            intents, user, assistant, out=out / "transcripts" / f"{mode}.jsonl",
            settings=RunSettings(samples=settings.samples, max_turns=settings.max_turns, seed=settings.seed,
                                 concurrency=settings.concurrency),
            progress=progress, after_reply=after_reply, helpers=[m for m in (extractor, rephrase) if m is not None],
        )
        records[mode] = run.conversations
    report = summarise(tasks, records)
    report["settings"] = {"modes": list(settings.modes), "samples": settings.samples, "max_turns": settings.max_turns,
                          "seed": settings.seed, "assistant": assistant.name,
                          "user": user_model.name if user_model else None, "extractor": extractor.name if extractor else None,
                          "rephrase": rephrase.name if rephrase else None}
    report["published"] = published_rows(kind="extrinsic")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "assistant.json", json.dumps(report, indent=2))
    write_text(out / "assistant.md", markdown(report))
    return report


async def _extract(task: Task, reply: str, extractor: ChatModel | None, conv: Conversation) -> str | None:
    """The answer in ``reply``: read by the task's rule, or by ``extractor`` (its tokens recorded
    in the conversation as the ``extractor`` side's)."""
    if extractor is None:
        return extract_answer(task, reply)
    prompt = fill_prompt("extract_answer.txt", task=task.text, reply=reply)
    said = await extractor.reply([{"role": "user", "content": prompt}], seed=0)
    conv.usage.setdefault("extractor", Usage()).add(said.prompt_tokens, said.completion_tokens)
    text = said.text.strip()
    return None if not text or text.upper() == "NONE" else (extract_answer(task, text) or text)


def conversation_score(conv: Conversation) -> float:
    """The score of the last answer attempt (0 when there was none)."""
    attempts = conv.answer_attempts()
    return attempts[-1].score if attempts else 0.0


def summarise(tasks: list[Task], records: dict[str, list[Conversation]]) -> AssistantReport:
    by_id = {t.id: t for t in tasks}
    rows: list[ModeResult] = []
    per_conversation: list[ConversationResult] = []
    task_means: dict[tuple[str, str], dict[str, float]] = {}
    for mode, convs in records.items():
        groups: dict[str, list[Conversation]] = defaultdict(list)
        for c in convs:
            groups[c.metadata["suite"]].append(c)
        for suite, items in sorted(groups.items()):
            scores = [conversation_score(c) for c in items]
            per_task: dict[str, list[float]] = defaultdict(list)
            for c, s in zip(items, scores):
                per_task[c.metadata["task_id"]].append(s)
            task_means[(suite, mode)] = {k: sum(v) / len(v) for k, v in per_task.items()}
            figures = aptitude_unreliability(per_task)
            row: ModeResult = {"suite": suite, "mode": mode, "conversations": len(items), "score": mean_ci(scores),
                               "aptitude": figures["aptitude"], "unreliability": figures["unreliability"],
                               "turns": describe([len(c.user_turns()) for c in items]),
                               "end_reasons": dict(sorted(Counter(str(c.end_reason) for c in items).items())),
                               "tokens": token_totals(items)}
            isolations = Counter(e.isolation for c in items for e in c.answer_attempts() if e.isolation is not None)
            if isolations:
                row["code_isolation"] = dict(sorted(isolations.items()))
            if mode == "simulated":
                row["intent_coverage"] = describe([intent_coverage(by_id[c.metadata["task_id"]], c) for c in items])
                row["lexical_difference"] = describe([lexical_difference(by_id[c.metadata["task_id"]], c) for c in items])
            found = [attribution(by_id[c.metadata["task_id"]], c, s, mode != "simulated") for c, s in zip(items, scores)]
            causes = [a["failure_cause"] for a in found]
            row["score_simulator_clean"] = mean_ci([s for s, a in zip(scores, found) if a["clean"]])
            row["simulator_failure_rate"] = mean_ci([1.0 if cause in ("simulator", "both") else 0.0 for cause in causes])
            row["failure_causes"] = {cause: causes.count(cause) for cause in CAUSES if cause in causes}
            rows.append(row)
            for c, s, a in zip(items, scores, found):
                per_conversation.append({"id": c.id, "task_id": c.metadata["task_id"], "suite": suite, "mode": mode,
                                         "score": s, "turns": len(c.user_turns()), "end_reason": c.end_reason,
                                         "failure_cause": a["failure_cause"], "missing_shards": a["missing_shards"], "faults": a["faults"]})
    for row in rows:
        full = task_means.get((row["suite"], "full"))
        if full is not None and row["mode"] != "full":
            # full minus this mode: positive when the mode scored worse than the whole task in one turn
            row["drop_vs_full"] = paired_difference_ci(full, task_means[(row["suite"], row["mode"])])
    return {"results": rows, "conversations": per_conversation}


#: why a conversation failed its task (``failure_cause``): see :func:`failure_cause`
CAUSES = ("assistant", "simulator", "both", "unknown")


def missing_shards(task: Task, conv: Conversation) -> list[int]:
    """The shards of ``task`` the user never conveyed (by index): a shard counts as conveyed when
    half its content words appear in the user's turns (:func:`userlm.faults.covered`)."""
    said = [m.content for m in conv.user_turns()]
    return [i for i, shard in enumerate(task.shards or [task.text]) if not covered(shard, said)]


def user_faults(conv: Conversation) -> list[str] | None:
    """The faults the user's turns show (each once, in :data:`userlm.faults.FAULTS` order); None
    when the record predates fault checks."""
    turns = [*conv.user_turns(), *([conv.final_turn] if conv.final_turn is not None else [])]
    if not turns or any(m.faults is None for m in turns):
        return None
    found = {name for m in turns for name in m.faults or []}
    return [name for name in FAULTS if name in found]


def failure_cause(score: float, missing: list[int], faults: list[str] | None) -> str | None:
    """Why a conversation failed its task (None when it did not fail), from the shards its user
    never conveyed (``missing``) and the faults of its user's turns (None: never checked):

    * ``simulator``: the user never conveyed a shard the task needs, so no assistant could solve it;
    * ``both``: every shard was conveyed, but the user's turns show faults (the assistant had what
      it needed, and the user also misbehaved);
    * ``assistant``: every shard was conveyed by clean user turns;
    * ``unknown``: the record carries no fault checks (made before they existed).
    """
    if score >= 1.0:
        return None
    if missing:
        return "simulator"
    if faults is None:
        return "unknown"
    return "both" if faults else "assistant"


def attribution(task: Task, conv: Conversation, score: float, scripted: bool) -> dict[str, Any]:
    """A conversation's ``failure_cause``, ``missing_shards`` and ``faults``. ``scripted``: its user
    replayed the task's own words (the full, concat and sharded modes), so only its shards are checked;
    ``clean``: every shard conveyed by turns without faults."""
    missing, faults = missing_shards(task, conv), user_faults(conv)
    return {"failure_cause": failure_cause(score, missing, [] if scripted else faults), "missing_shards": missing, "faults": faults,
            "clean": not missing and (scripted or faults == [])}


def intent_coverage(task: Task, conv: Conversation) -> float:
    """Share of the task's content words that the user's turns conveyed."""
    wanted = content_words(task.text)
    said = content_words(" ".join(m.content for m in conv.user_turns()))
    return len(wanted & said) / len(wanted) if wanted else 0.0


def lexical_difference(task: Task, conv: Conversation) -> float:
    """Share of the words in the user's turns that do not appear in the task text."""
    said = words(" ".join(m.content for m in conv.user_turns()))
    task_words = set(words(task.text))
    return sum(1 for w in said if w not in task_words) / len(said) if said else 0.0


def _fmt(ci: MeanCI | None, scale: float = 100.0) -> str | None:
    if not ci or ci["mean"] is None or ci["low"] is None or ci["high"] is None:
        return None
    return f"{scale * ci['mean']:.1f} [{scale * ci['low']:.1f}, {scale * ci['high']:.1f}]"


HEADINGS = ["suite", "mode", "n", "score (95% CI)", "score, simulator-clean", "simulator-caused failures", "drop vs full (full − mode)",
            "aptitude", "unreliability", "turns (mean)", "intent coverage", "lexical difference"]
NOTE = ("Scores and drops are percentages; intervals are percentile bootstraps over conversations (drops: over tasks). "
        "A drop is the full mode's score minus this mode's, task by task: positive means this mode did worse. "
        "Simulator-clean: the conversations whose user conveyed every shard of the task in turns without faults. "
        "Simulator-caused failures: the share of all conversations that failed with the user at fault: a shard never "
        "conveyed (failure_cause simulator) or faults in the user's turns (both); per conversation in assistant.json.")


def table(report: AssistantReport, notes: Footnotes) -> list[list[str]]:
    """The table's rows as printed (markdown and the HTML report alike); empty cells get a footnote."""
    modes = {r["mode"] for r in report["results"]}
    rows = []
    for r in report["results"]:
        cov = r["intent_coverage"]["mean"] if "intent_coverage" in r else None
        lex = r["lexical_difference"]["mean"] if "lexical_difference" in r else None
        if r["mode"] == "full":
            drop_reason = "the full mode is the baseline the drops are measured against."
        elif "full" not in modes:
            drop_reason = "no drop without the full mode; add full to --modes."
        else:
            drop_reason = "no task was scored in both this mode and the full mode."
        only_simulated = "measured for the simulated mode only (the other modes replay the task's own words)."
        unscored = "no task was scored."
        no_checks = "no conversation was both clean and checked: every one missed a shard or showed a fault, or the records predate fault checks."
        rows.append([r["suite"], r["mode"], str(r["conversations"]),
                     notes.cell(_fmt(r["score"]), "no conversation was scored."),
                     notes.cell(_fmt(r.get("score_simulator_clean")), no_checks),
                     notes.cell(_fmt(r.get("simulator_failure_rate")), "no conversation was scored."),
                     notes.cell(_fmt(r.get("drop_vs_full")), drop_reason),
                     notes.cell(number(r["aptitude"], "{:.1f}"), unscored),
                     notes.cell(number(r["unreliability"], "{:.1f}"), unscored),
                     notes.cell(number(r["turns"]["mean"], "{:.2f}"), "no conversation."),
                     notes.cell(number(cov, "{:.1f}", 100), only_simulated),
                     notes.cell(number(lex, "{:.1f}", 100), only_simulated)])
    return rows


def isolation_lines(report: AssistantReport) -> list[str]:
    """Where the code under test ran, and a warning when some of it ran without real isolation."""
    isolations: Counter = Counter()
    for r in report["results"]:
        isolations.update(r.get("code_isolation") or {})
    if not isolations:
        return []
    lines = ["Code under test ran under: " + ", ".join(f"{k} ({v} attempts)" for k, v in sorted(isolations.items())) + "."]
    if set(isolations) - {"bubblewrap"}:
        lines.append("**Warning:** some code ran without real isolation (only an in-process guard); install bubblewrap.")
    return lines


def table_notes(report: AssistantReport) -> dict[str, Any]:
    """What the HTML report shows of a result: the printed rows, their footnotes, the notes below."""
    notes = Footnotes()
    return {"headings": HEADINGS, "rows": table(report, notes), "notes": notes.reasons, "note": NOTE,
            "isolation": isolation_lines(report)}


def markdown(report: AssistantReport) -> str:
    notes = Footnotes()
    settings = report.get("settings") or {}
    lines = ["# Assistant evaluation", "", f"Assistant: `{settings.get('assistant')}`; user model (simulated mode): "
             f"`{settings.get('user')}`; samples per task: {settings.get('samples')}.", "",
             "| " + " | ".join(HEADINGS) + " |", "|" + "---|" * len(HEADINGS)]
    lines += ["| " + " | ".join(row) + " |" for row in table(report, notes)]
    lines += ["", NOTE, "Transcripts: `transcripts/<mode>.jsonl` (open them with `userlm show` or `userlm report`)."]
    lines += ["", "Tokens (prompt + completion, as the records hold them): " + "; ".join(
        f"{r['suite']} {r['mode']}: " + ", ".join(f"{side} {t['prompt']:,} + {t['completion']:,}" for side, t in r["tokens"].items())
        for r in report["results"] if r.get("tokens")) + "."]
    if isolation_lines(report):
        lines += [""] + isolation_lines(report)
    pub = report.get("published") or {}
    if pub.get("rows"):
        lines += ["", "## Published: simulated users talking to GPT-4o (the UserLM paper's Table 3)", "",
                  f"Not measured here. {pub.get('setup', '')}", "",
                  "| simulator (published) | assistant score | intent coverage | turn variance | turns (range) | unigram difference |",
                  "|---|---|---|---|---|---|"]
        for row in pub["rows"]:
            span = row.get("turn_range") or [None, None]
            lines.append(f"| *{row['simulator']}* | *{row.get('assistant_score', '-')}* | *{row.get('intent_coverage', '-')}* | "
                         f"*{row.get('turn_variance', '-')}* | *{span[0]}–{span[1]}* | *{row.get('unigram_difference', '-')}* |")
        lines += ["", f"Source: {pub.get('source', '')}"]
    if notes.reasons:
        lines += [""] + notes.lines()
    return "\n".join(lines) + "\n"
