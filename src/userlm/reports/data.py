"""What a report shows, computed from conversation records and evaluation results."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, cast

from ..conversation import Conversation, iter_conversations, token_totals
from ..errors import UserError


def _compact(conv: Conversation, run: int) -> dict[str, Any]:
    """The fields the browser needs, in short keys (reports of 10,000 conversations stay small)."""
    messages = []
    for m in conv.messages:
        item: dict[str, Any] = {"r": m.role[0], "c": m.content}
        if m.rejected:
            item["x"] = [[r.reason, r.draft] for r in m.rejected]
        if m.end_prob is not None:
            item["p"] = round(m.end_prob, 4)
        if m.faults:
            item["q"] = list(m.faults)
        attempts = m.answer_attempts()
        if attempts:
            item["a"] = [[e.answer[:2000], e.score] for e in attempts]
        messages.append(item)
    scores = [a[1] for m in messages for a in m.get("a", [])]
    out = {
        "id": conv.id, "run": run, "intent_id": conv.intent_id, "intent": conv.intent or "", "end": conv.end_reason,
        "m": messages, "task": conv.metadata.get("task_id"), "mode": conv.metadata.get("mode"),
        "score": scores[-1] if scores else None, "error": conv.error,
    }
    if conv.final_turn is not None:
        out["f"] = {"x": [[r.reason, r.draft] for r in conv.final_turn.rejected or []], "p": conv.final_turn.end_prob,
                    "q": list(conv.final_turn.faults or [])}
    return out


def run_summary(path: Path, convs: list[Conversation]) -> dict[str, Any]:
    user_turns = [m for c in convs for m in c.user_turns()]
    finals = [c.final_turn for c in convs if c.final_turn is not None]
    rejections = Counter(r.reason for m in user_turns + finals for r in (m.rejected or []))
    # every draft the user model wrote: kept turns, accepted ends and refusals alike
    drafts = sum((m.attempts or 1) for m in user_turns) + sum((m.attempts or 0) for m in finals)
    first = convs[0] if convs else None
    return {
        "name": path.name,
        "path": str(path),
        "conversations": len(convs),
        "intents": len({c.intent_id for c in convs}),
        "user_models": sorted({c.user_model or "?" for c in convs}),
        "assistant_models": sorted({c.assistant_model or "?" for c in convs}),
        "settings": first.settings if first else {},
        "end_reasons": dict(Counter(c.end_reason for c in convs)),
        "user_turns": len(user_turns),
        "drafts": drafts,
        "refused": sum(rejections.values()),  #: refused drafts; the rejection rate is refused / drafts
        "rejections": dict(rejections),
        "turns_per_conversation": [len(c.user_turns()) for c in convs],
        "words_per_user_turn": [len(m.content.split()) for m in user_turns],
        "end_probability_by_turn": _end_probability_by_turn(convs),
        "tokens": token_totals(convs),
        **fault_summary(convs),
    }



def fault_summary(convs: list[Conversation], examples: int = 3) -> dict[str, Any]:
    """Per fault (:data:`userlm.faults.FAULTS`): how many user turns show it, the share of checked
    turns that do (turns recorded before faults were caught are not counted), and the first
    conversations that show it, to open from the report."""
    from ..faults import FAULTS

    checked = 0
    counts: Counter = Counter()
    where: dict[str, list[str]] = defaultdict(list)
    for c in convs:
        for m in [*c.user_turns(), *([c.final_turn] if c.final_turn is not None else [])]:
            if m.faults is None:
                continue
            checked += 1
            for name in m.faults:
                counts[name] += 1
                if c.id not in where[name] and len(where[name]) < examples:
                    where[name].append(c.id)
    return {"fault_checked_turns": checked,
            "faults": {name: {"turns": counts[name], "rate": counts[name] / checked if checked else None, "examples": where[name]}
                       for name in FAULTS}}


def _end_probability_by_turn(convs: list[Conversation]) -> list[dict[str, float | None]]:
    """Per user-turn index: the mean P(end) the model gave, and the share of conversations
    that ended there (among those that reached it)."""
    probs: dict[int, list[float]] = defaultdict(list)
    reached: Counter = Counter()
    ended: Counter = Counter()
    for c in convs:
        turns = c.user_turns()
        for i, m in enumerate(turns):
            reached[i + 1] += 1
            if m.end_prob is not None:
                probs[i + 1].append(m.end_prob)
        final = len(turns) + 1
        if c.final_turn is not None:
            reached[final] += 1
            if c.final_turn.end_prob is not None:
                probs[final].append(c.final_turn.end_prob)
            if c.end_reason == "user_ended":
                ended[final] += 1
    return [
        {"turn": t, "mean_end_prob": (sum(probs[t]) / len(probs[t])) if probs[t] else None,
         "ended_share": ended[t] / reached[t], "reached": reached[t]}
        for t in sorted(reached)
    ]


def reference_words(path: Path) -> list[int]:
    """Words per user turn of real conversations (a reference distribution)."""
    convs = list(iter_conversations(path))
    return [len(m.content.split()) for c in convs for m in c.user_turns()]


def load_evaluation(path: Path) -> dict[str, Any]:
    """An ``eval-assistant`` result (``assistant.json``) or an ``eval-user`` one (``user_eval.json``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable evaluation JSON ({exc}).") from None
    if isinstance(data, dict) and "simulators" in data:
        return _user_evaluation(path, data)
    if not isinstance(data, dict) or "results" not in data:
        raise UserError(f"{path}: not an evaluation result; give the assistant.json or user_eval.json that "
                        "userlm eval-assistant or eval-user wrote.")
    from ..evaluation.assistants.evaluate import table_notes
    from ..evaluation.assistants.results import AssistantReport

    report = cast("AssistantReport", data)
    return {"name": path.name, "kind": "assistant", "results": report["results"], "settings": report.get("settings", {}),
            "published": report.get("published"), **table_notes(report)}


def _user_evaluation(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Table rows as the markdown shows them (empty cells footnoted), and each simulator's termination curve."""
    from ..evaluation.simulators.results import UserEvalReport
    from ..evaluation.simulators.table import NOTE, REPLAY_NOTE, replay_table, table, warnings
    from ..evaluation.tables import Footnotes

    report = cast("UserEvalReport", data)
    notes = Footnotes()
    headings, cells = table(report, notes)
    rows = [dict(zip(headings, [c.replace("`", "") for c in row])) for row in cells]
    replay = replay_table(report, notes)
    replay_view = None if replay is None else {
        "headings": replay[0], "rows": [[c.replace("`", "") for c in row] for row in replay[1]], "note": REPLAY_NOTE}
    curves = [{"simulator": s["simulator"], **{key: [p[key] for p in s["metrics"]["end_f1"]["curve"]] for key in ("threshold", "f1", "precision", "recall")}}
              for s in data["simulators"] if (s["metrics"].get("end_f1") or {}).get("curve")]
    return {"name": path.name, "kind": "user", "results": rows, "curves": curves, "settings": data.get("settings", {}),
            "notes": notes.reasons, "note": NOTE, "warnings": warnings(report), "replay": replay_view}


def build(runs: list[Path], evaluations: list[Path], reference: Path | None = None) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready object."""
    summaries: list[dict[str, Any]] = []
    conversations: list[dict[str, Any]] = []
    for index, path in enumerate(runs):
        convs = list(iter_conversations(path))
        if not convs:
            raise UserError(f"{path}: holds no conversations.")
        summaries.append(run_summary(path, convs))
        conversations.extend(_compact(c, index) for c in convs)
    return {
        "runs": summaries,
        "conversations": conversations,
        "evaluations": [load_evaluation(p) for p in evaluations],
        "reference_words": reference_words(reference) if reference else None,
        "reference_name": reference.name if reference else None,
    }
