"""The user-simulator table: its columns, how a figure prints, the markdown, and the published
rows shown alongside (package data, or a file given with ``--published``)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from ..errors import UserError

#: Table columns: key, heading, which direction is better.
METRICS = (
    ("ppl_intent", "PPL (intent)", "lower"),
    ("ppl_no_intent", "PPL (no intent)", "lower"),
    ("first_turn_diversity", "1st-turn diversity", "higher"),
    ("distinct_1", "distinct-1", "higher"),
    ("distinct_2", "distinct-2", "higher"),
    ("intent_overlap_first", "intent overlap, 1st turn", "lower"),
    ("intent_overlap_turn", "intent overlap, per turn", "lower"),
    ("end_f1", "termination F1", "higher"),
    ("naturalness", "naturalness", "higher"),
    ("role_adherence", "role adherence", "higher"),
    ("intent_adherence", "intent adherence", "higher"),
)
PERCENT = {"first_turn_diversity", "end_f1", "naturalness", "role_adherence", "intent_adherence",
           "intent_overlap_first", "intent_overlap_turn", "distinct_1", "distinct_2"}


def published_rows(path: str | Path | None = None) -> dict:
    """The paper's published figures to show alongside (package data unless a file is given)."""
    if path is None:
        return json.loads(files("userlm.evaluation").joinpath("data", "published.json").read_text(encoding="utf-8"))
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON file of published figures ({exc}).") from None
    if not isinstance(data, dict) or not all(isinstance(r, dict) and "simulator" in r for r in data.get("rows", [])):
        raise UserError(f"{path}: expected {{\"rows\": [{{\"simulator\": ..., \"metrics\": {{...}}}}]}}, like the built-in published.json.")
    return data


def cell(key: str, fig: dict | None) -> str:
    """A figure as the table prints it: percentages except perplexity, with its interval."""
    if not fig or fig.get("value") is None:
        return "-"
    scale = 100.0 if key in PERCENT and key != "first_turn_diversity" else 1.0
    text = f"{fig['value'] * scale:.1f}"
    if fig.get("low") is not None:
        text += f" [{fig['low'] * scale:.1f}, {fig['high'] * scale:.1f}]"
    return text


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = ["# User simulator evaluation", "",
             f"Held-out conversations: {s['held_out_conversations']}; intents: {s['intents']}; questions: {s['questions']}; "
             f"assistant in simulated conversations: `{s['assistant']}`; judge: `{s['judge']}`; detector: `{s['detector']}`.", "",
             "| simulator | " + " | ".join(f"{h} {'↓' if d == 'lower' else '↑'}" for _, h, d in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for r in report["simulators"]:
        lines.append(f"| `{r['simulator']}` | " + " | ".join(cell(k, r["metrics"].get(k)) for k, _, _ in METRICS) + " |")
    lines.append("| real users (held-out) | " + " | ".join(cell(k, report["real_users"]["metrics"].get(k)) for k, _, _ in METRICS) + " |")
    pub = report.get("published") or {}
    for row in pub.get("rows", []):
        lines.append(f"| *{row['simulator']}* (published) | " + " | ".join(
            "-" if row.get("metrics", {}).get(k) is None else f"*{row['metrics'][k]}*" for k, _, _ in METRICS) + " |")
    lines += ["", "Percentages except perplexity; brackets are bootstrap 95% intervals (perplexity and termination resample "
              "conversations, the rest resample items; distinct-n, a ratio over pooled turns, has none). The termination F1 "
              "is at the threshold that maximises it on these data.", ""]
    if pub.get("rows"):
        lines += [f"Rows in italics are published figures, not measured here: {pub.get('source', '')}. {pub.get('note', '')}".strip(), ""]
    for r in report["simulators"]:
        f1 = r["metrics"].get("end_f1")
        if f1 and f1.get("value") is not None:
            lines.append(f"- `{r['simulator']}`: best termination F1 at P(end) >= {f1['threshold']:.3g} "
                         f"(precision {f1['precision']:.2f}, recall {f1['recall']:.2f}; ending everywhere would score "
                         f"{100 * f1['always_end_f1']:.1f}); use `userlm simulate --end-threshold {f1['threshold']:.3g}`.")
    return "\n".join(lines) + "\n"
