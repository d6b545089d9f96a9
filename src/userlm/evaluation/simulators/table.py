"""The user-simulator table: its columns, how a figure prints, the markdown, and the published
rows shown alongside (package data, or a file given with ``--published``)."""

from __future__ import annotations

from typing import Any

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


#: The replay table's columns: where the figure sits in a replay part, heading, better direction, scale
REPLAY = (
    (("stop", "f1"), "stop F1", "higher", 100.0),
    (("stop", "precision"), "stop precision", "higher", 100.0),
    (("stop", "recall"), "stop recall", "higher", 100.0),
    (("stop", "auroc"), "stop AUROC", "higher", 100.0),
    (("turn_words", "first"), "words/turn distance, 1st turns", "lower", 1.0),
    (("turn_words", "follow_up"), "words/turn distance, follow-ups", "lower", 1.0),
    (("lexical", "mattr"), "MATTR z", "closer to 0", 1.0),
    (("lexical", "hdd"), "HD-D z", "closer to 0", 1.0),
    (("lexical", "yule_k"), "Yule's K z", "closer to 0", 1.0),
    (("next_turn",), "next-turn similarity", "higher", 100.0),
)
REPLAY_NOTE = ("Replay against real people: at every point where a person spoke or stopped, the simulator was given the "
               "intent and the real history. Stop: ending against where the person stopped (the threshold tuned out of "
               "sample; AUROC of P(end)); words/turn distance: Wasserstein-1, in words, between the simulator's and the "
               "people's words per turn; lexical: the simulator's mean MATTR, HD-D and Yule's K as z-scores against the "
               "people's; next-turn similarity: TF-IDF cosine of a draft with the person's actual next turn. Percentages "
               "except distances and z; brackets are 95% intervals resampling conversations (resampling widens both "
               "distributions, so a distance's interval can sit above the distance itself). Control rows give each figure "
               "a scale: people against people (the conversations split in halves; the stop row is a rule that knows only "
               "how many replies came before) and each simulator against itself (its first drafts against its second).")


def _at(part: dict, where: tuple[str, ...]) -> Any:
    found: Any = part
    for key in where:
        found = found.get(key) if isinstance(found, dict) else None
    return found


def _replay_cell(part: dict, where: tuple[str, ...], scale: float) -> str | None:
    fig = _at(part, where)
    if not isinstance(fig, dict) or fig.get("value") is None:
        return None
    out = f"{fig['value'] * scale:.{1 if scale != 1.0 else 2}f}"
    if fig.get("low") is not None and fig.get("high") is not None:
        out += f" [{fig['low'] * scale:.{1 if scale != 1.0 else 2}f}, {fig['high'] * scale:.{1 if scale != 1.0 else 2}f}]"
    return out


def replay_table(report: UserEvalReport, notes: Footnotes) -> tuple[list[str], list[list[str]]] | None:
    """The replay table (None when no simulator has a replay part): each simulator beside the
    others, then each one against itself, then people against people."""
    replays: list[tuple[str, dict[str, Any]]] = []
    for r in report["simulators"]:
        part = (r.get("parts") or {}).get("replay")
        if isinstance(part, dict) and "stop" in part:
            replays.append((r["simulator"], part))
    if not replays:
        return None
    arrow = {"higher": "↑", "lower": "↓", "closer to 0": "→0"}
    headings = ["simulator"] + [f"{h} {arrow[d]}" for _, h, d, _ in REPLAY]

    def row(label: str, part: dict) -> list[str]:
        return [label] + [notes.cell(_replay_cell(part, where, scale), (_why(part, where) or "not measured for this row."))
                          for where, _, _, scale in REPLAY]

    rows = [row(f"`{name}`", part) for name, part in replays]
    rows += [row(f"*control:* `{name}` against itself", part["controls"]["simulator_vs_itself"]) for name, part in replays]
    rows.append(row("*control:* people against people", replays[0][1]["controls"]["human_vs_human"]))
    return headings, rows


def _why(part: dict, where: tuple[str, ...]) -> str | None:
    """The note nearest the figure: its own, or that of what holds it (a whole measure, the row)."""
    for depth in range(len(where), -1, -1):
        found = _at(part, where[:depth])
        if isinstance(found, dict) and found.get("note"):
            return str(found["note"])
    return None


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
    replay = replay_table(report, notes)
    if replay is not None:
        headings, rows = replay
        lines += ["## Replay against real people", "", "| " + " | ".join(headings) + " |", "|---|" + "---|" * (len(headings) - 1)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        first = next(part for r in report["simulators"] if isinstance(part := (r.get("parts") or {}).get("replay"), dict)
                     and "stop" in part)
        lines += ["", REPLAY_NOTE, f"{first['conversations']} conversations, {first['points']} points "
                  f"({first['drafts']} drafts at each point a person spoke).", ""]
    spent = [(r["simulator"], r["tokens"]) for r in report["simulators"] if r.get("tokens")]
    if spent:
        lines += ["Tokens (prompt + completion) each simulator's parts used when they ran, by side (`user` is the simulator; a judge's "
                  "answers taken from its cache count nothing): " + "; ".join(
                      f"`{name}`: " + ", ".join(f"{side} {t['prompt']:,} + {t['completion']:,}" for side, t in tokens.items())
                      for name, tokens in spent) + ".", ""]
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
