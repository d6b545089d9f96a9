"""The user-simulator table: its columns, how a figure prints, the markdown, and the published
rows shown alongside (package data, or a file given with ``--published``)."""

from __future__ import annotations

from ..metrics import Figure
from ..tables import Footnotes
from .results import UserEvalReport

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


def text(key: str, fig: Figure | None) -> str | None:
    """A figure as the table prints it (percentages except perplexity, with its interval), or None."""
    value = fig.get("value") if fig else None
    if not fig or value is None:
        return None
    scale = 100.0 if key in PERCENT and key != "first_turn_diversity" else 1.0
    out = f"{value * scale:.1f}"
    low, high = fig.get("low"), fig.get("high")
    if low is not None and high is not None:
        out += f" [{low * scale:.1f}, {high * scale:.1f}]"
    return out


def cell(key: str, fig: Figure | None) -> str:
    """:func:`text`, or ``-`` where there is no figure."""
    return text(key, fig) or "-"


def _real_users_gap(key: str) -> str:
    if key == "naturalness":
        return "not measured for real users: naturalness needs a detector (--detector)."
    if key in ("ppl_intent", "ppl_no_intent", "end_f1", "role_adherence", "intent_adherence"):
        return "does not apply to real users: it scores a model's probabilities or replies."
    if key.startswith("intent_overlap"):
        return "needs intents, and the held-out conversations carry none."
    return "too few held-out conversations to measure it on."


def table(report: UserEvalReport, notes: Footnotes) -> tuple[list[str], list[list[str]]]:
    """The table's headings and rows as printed (markdown and the HTML report alike); empty cells
    get a footnote in ``notes``."""
    headings = ["simulator"] + [f"{h} {'↓' if d == 'lower' else '↑'}" for _, h, d in METRICS]
    rows = []
    for r in report["simulators"]:
        missing = r.get("missing", {})
        rows.append([f"`{r['simulator']}`"] + [notes.cell(text(k, r["metrics"].get(k)), missing.get(k, "not measured for this simulator."))
                                               for k, _, _ in METRICS])
    real = report["real_users"]["metrics"]
    rows.append(["real users (held-out)"] + [notes.cell(text(k, real.get(k)), _real_users_gap(k)) for k, _, _ in METRICS])
    for row in (report.get("published") or {}).get("rows", []):
        values = row.get("metrics", {})
        rows.append([f"*{row['simulator']}* (published)"] + [
            notes.cell(None if values.get(k) is None else f"*{values[k]}*", "the paper gives no figure here.") for k, _, _ in METRICS])
    return headings, rows


def warnings(report: UserEvalReport) -> list[str]:
    return [w for r in report["simulators"] for w in r.get("warnings", [])]


NOTE = ("Percentages except perplexity; brackets are bootstrap 95% intervals (perplexity and termination resample "
        "conversations, the rest resample items; distinct-n, a ratio over pooled turns, has none). The termination F1 "
        "is out of sample: the P(end) threshold is tuned on four fifths of the conversations and scored on the fifth it "
        "did not see, five times over (the in-sample best is in the JSON, labelled as such).")


def _named(model: str | None) -> str:
    return f"`{model}`" if model else "none"


def markdown(report: UserEvalReport) -> str:
    s = report["settings"]
    notes = Footnotes()
    lines = ["# User simulator evaluation", "",
             f"Held-out conversations: {s['held_out_conversations']}; intents: {s['intents']}; questions: {s['questions']}; "
             f"assistant in simulated conversations: `{s['assistant']}`; judge: {_named(s['judge'])}; detector: {_named(s['detector'])}.", ""]
    lines += [f"**Warning:** {w}" for w in warnings(report)]
    if warnings(report):
        lines.append("")
    headings, rows = table(report, notes)
    lines += ["| " + " | ".join(headings) + " |", "|---|" + "---|" * len(METRICS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", NOTE, ""]
    pub = report.get("published") or {}
    if pub.get("rows"):
        lines += [f"Rows in italics are published figures, not measured here: {pub.get('source', '')} {pub.get('note', '')}".strip(), ""]
    for r in report["simulators"]:
        f1 = r["metrics"].get("end_f1")
        value = f1.get("value") if f1 else None
        if f1 and value is not None:
            lines.append(f"- `{r['simulator']}`: termination F1 {100 * value:.1f} out of sample (precision {f1['precision']:.2f}, "
                         f"recall {f1['recall']:.2f}; ending everywhere would score {100 * f1['always_end_f1']:.1f}); the folds' "
                         f"median threshold is P(end) >= {f1['threshold']:.3g}: `userlm simulate --end-threshold {f1['threshold']:.3g}`.")
        elif f1 and f1.get("note"):
            lines.append(f"- `{r['simulator']}`: no termination F1 and no threshold advice: {f1['note']}")
    if notes.reasons:
        lines += [""] + notes.lines()
    return "\n".join(lines) + "\n"
