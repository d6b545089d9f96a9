"""Evaluate user simulators side by side (``userlm eval-user``): how human-like they are.

    userlm eval-user --user hf:DIR --user prompted:openai:gpt-4o-mini \\
        --data held_out.jsonl --judge openai:gpt-4o --out eval/

For each simulator:

* **alignment** -- perplexity of the real held-out user turns, with and without the intent
  (local models: ``hf:`` in the UserLM format, ``prompted:hf:`` through the flipped prompt);
* **first-turn diversity**, **distinct-1/2**, **intent decomposition** (first turn and every
  turn) and **naturalness** -- over conversations the simulator has with an assistant, one per
  intent;
* **dialogue termination** -- P(end) at every point after an assistant reply in the held-out
  conversations against where the real user ended: the threshold curve, the best F1 and the
  threshold to pass to ``userlm simulate --end-threshold``;
* **role adherence** and **intent adherence** -- the scenarios in :mod:`.scenarios`.

The real users of the held-out data are measured the same way where that makes sense (a
reference row). Every figure carries a bootstrap 95% interval. Results go to
``eval/user_eval.json`` (every figure and per-item result) and ``eval/user_eval.md``; each
finished part is saved under ``eval/parts/`` and judge answers in ``eval/judge_cache.jsonl``,
so running the same command again resumes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from ...conversation import Conversation, summed_tokens
from ...errors import UserError
from ...files import write_text
from ...intents import Intent
from ...models.base import ChatModel, sampling_of
from ...runs import fingerprint, model_identity, shown
from ..metrics import Figure
from ..tables import published_rows
from .detectors import Detector
from .judge import CachedJudge
from .parts import (
    PARTS,
    FixtureAssistant,
    Simulator,
    UserEvalSettings,
    alignment_part,
    conversation_figures,
    conversations_part,
    intent_part,
    naturalness_part,
    role_part,
    termination_part,
)
from .results import AlignmentPart, Parts, RealUsers, SimulatorResult, UserEvalReport
from .scenarios import Question, package_lines
from .table import METRICS, markdown


def _save(path: Path, data: Mapping[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=1))


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _determinants(sim: Simulator, data: list[Conversation], intents: list[Intent], questions: Sequence[Question],
                  assistant: ChatModel, judge: CachedJudge | None, detector: Detector | None, scenario_assistant: ChatModel | None,
                  settings: UserEvalSettings) -> dict[str, Any]:
    """What decides a simulator's saved parts, read off the models and the settings: a resumed
    evaluation must share all of it, or it would mix figures of two set-ups in one table."""
    sampling = sampling_of(sim.model)
    return json.loads(json.dumps({
        "simulator": model_identity(sim.spec),
        "sampling": asdict(sampling) if sampling is not None else None,
        "seed": settings.seed, "max_turns": settings.max_turns, "scenario_limit": settings.scenario_limit,
        "end_samples": settings.end_samples, "resamples": settings.resamples, "guardrails": settings.guardrails.to_dict(),
        "held-out conversations": fingerprint([c.id for c in data]),
        "intents": fingerprint([[i.id, i.text] for i in intents]),
        "questions": fingerprint([q.id for q in questions]),
        "assistant": model_identity(assistant.name),
        "judge": judge.name if judge else None,
        "detector": detector.name if detector else None,
        "scenario assistant": scenario_assistant.name if scenario_assistant else None,
        # kept only when it is not the default, so that parts saved before the replay existed still resume
        **({"replay drafts": settings.replay_drafts} if settings.replay_drafts != UserEvalSettings.replay_drafts else {}),
    }))


def _resumable(out: Path, sim: Simulator, saved: dict[str, Any], determined: dict[str, Any]) -> None:
    """Refuse, in one sentence, to add to a simulator's saved parts made with other settings
    (``saved``: what its parts were made with; empty for parts saved before that was kept)."""
    for key in [*determined, *(k for k in saved if k not in determined)]:
        if saved and saved.get(key) != determined.get(key):
            now = shown(determined[key]) if key in determined else "the default"
            raise UserError(f"{out} holds parts of {sim.spec} made with {key} = {shown(saved.get(key))}, but this run has "
                            f"{now}; run with the same settings, or write to another --out.")


async def evaluate_users(
    simulators: list[Simulator], data: list[Conversation], intents: list[Intent], out: str | Path, *,
    assistant: ChatModel | None = None, judge: CachedJudge | None = None, detector: Detector | None = None,
    questions: Sequence[Question] = (), scenario_assistant: ChatModel | None = None, settings: UserEvalSettings = UserEvalSettings(),
    published: dict | None = None, progress: bool = True, detail: bool = True, log=print,
) -> UserEvalReport:
    """Run every part for every simulator (resuming finished parts) and write the report.

    ``progress``: one bar over the simulators' parts, naming the part that runs; ``detail``:
    also the parts' own bars (scoring, simulating) under it. Without ``progress``, ``log`` is
    told which part starts."""
    from tqdm.auto import tqdm

    out = Path(out)
    assistant = assistant or FixtureAssistant()
    results: list[SimulatorResult] = []
    wanted = [p for p in PARTS if p in settings.parts and (p != "naturalness" or detector is not None)]
    bar = tqdm(total=len(simulators) * len(wanted), desc="evaluating", unit="part", disable=not progress)
    inner = progress and detail
    try:
        for sim in simulators:
            part_file = out / "parts" / f"{sim.slug}.json"
            parts: dict[str, Any] = _load(part_file)  # the saved parts, by name (see results.Parts)
            settings_file = out / "parts" / f"{sim.slug}.settings.json"  # what they were made with
            determined = _determinants(sim, data, intents, questions, assistant, judge, detector, scenario_assistant, settings)
            _resumable(out, sim, _load(settings_file), determined)

            async def run(name: str, make: Callable[[], Awaitable[Any]]) -> Any:
                if name not in settings.parts:
                    return {}
                if name not in parts:
                    if progress:
                        bar.set_postfix_str(f"{sim.spec}: {name}")
                    else:
                        log(f"{sim.spec}: {name} ...")
                    asked = judge.usage.model_copy() if judge is not None else None
                    parts[name] = await make()
                    if judge is not None and asked is not None and judge.usage.calls > asked.calls and isinstance(parts[name], dict):
                        judged = {"prompt": judge.usage.prompt_tokens - asked.prompt_tokens,
                                  "completion": judge.usage.completion_tokens - asked.completion_tokens}
                        parts[name]["tokens"] = {**parts[name].get("tokens", {}), "judge": judged}
                    _save(part_file, parts)
                    _save(settings_file, determined)
                bar.update(1)
                return parts[name]

            alignment: AlignmentPart = await run("alignment", lambda: alignment_part(sim, data, settings, inner))
            await run("termination", lambda: termination_part(sim, data, alignment, settings))
            await run("conversations", lambda: conversations_part(sim, intents, assistant, out, settings, inner))
            if detector is not None and "conversations" in parts:
                from ...conversation import read_conversations

                path = out / parts["conversations"]["transcripts"]
                texts = [m.content for c in read_conversations(path) for m in c.user_turns()]
                await run("naturalness", lambda: naturalness_part(texts, detector, settings))
            await run("role", lambda: role_part(sim, list(questions), judge, scenario_assistant, settings))
            await run("intent", lambda: intent_part(sim, intents[: settings.scenario_limit], judge, scenario_assistant, settings))
            await run("replay", lambda: _replay(sim, data, settings, alignment, inner))
            metrics, missing = _collect(parts, settings, detector is not None)
            result: SimulatorResult = {"simulator": sim.spec, "metrics": metrics, "missing": missing, "parts": cast(Parts, parts),
                                       "warnings": [p["warning"] for p in parts.values() if isinstance(p, dict) and p.get("warning")]}
            if isinstance(parts.get("replay"), dict):
                result["replay"] = parts["replay"]
            result["tokens"] = summed_tokens(p["tokens"] for p in parts.values() if isinstance(p, dict) and p.get("tokens"))
            results.append(result)
    finally:
        bar.close()
    reference = await _real_users(data, intents, detector, settings, out)
    report: UserEvalReport = {
        "simulators": results,
        "real_users": reference,
        "published": published if published is not None else published_rows(),
        "settings": {"parts": list(settings.parts), "max_turns": settings.max_turns, "scenario_limit": settings.scenario_limit,
                     "end_samples": settings.end_samples, "replay_drafts": settings.replay_drafts, "seed": settings.seed, "resamples": settings.resamples,
                     "held_out_conversations": len(data), "intents": len(intents), "questions": len(questions),
                     "assistant": assistant.name, "judge": judge.name if judge else None, "detector": detector.name if detector else None,
                     "scenario_assistant": scenario_assistant.name if scenario_assistant else "fixture (scripted replies)"},
    }
    _save(out / "user_eval.json", report)
    write_text(out / "user_eval.md", markdown(report))
    return report


#: which part measures which table column
PART_OF = {"ppl_intent": "alignment", "ppl_no_intent": "alignment", "end_f1": "termination",
           "first_turn_diversity": "conversations", "distinct_1": "conversations", "distinct_2": "conversations",
           "intent_overlap_first": "conversations", "intent_overlap_turn": "conversations", "naturalness": "naturalness",
           "role_adherence": "role", "intent_adherence": "intent"}


async def _replay(sim: Simulator, data: list[Conversation], settings: UserEvalSettings, alignment: AlignmentPart, progress: bool) -> dict:
    from .replay import replay_part

    if not any(c.intent for c in data):
        return {"skipped": "the held-out conversations carry no intents to replay them with (SimulatorArena's files do)"}
    return await replay_part(sim, data, settings, alignment.get("end_points") if alignment else None, progress)


def default_parts(data: list[Conversation]) -> tuple[str, ...]:
    """Every part, the replay when the held-out conversations carry intents to replay them with."""
    return tuple(p for p in PARTS if p != "replay" or any(c.intent for c in data))


def _collect(parts: dict[str, Any], settings: UserEvalSettings, has_detector: bool) -> tuple[dict[str, Figure], dict[str, str]]:
    """The table's figures from the parts, and for each column without a figure the reason why."""
    metrics: dict[str, Figure] = {}
    missing: dict[str, str] = {}
    for key, _, _ in METRICS:
        name = PART_OF[key]
        part = parts.get(name)
        fig = part.get(key) if isinstance(part, dict) else None
        if isinstance(fig, dict):
            metrics[key] = cast(Figure, fig)
            if fig.get("value") is not None:
                continue
        if name not in settings.parts:
            missing[key] = f"not measured: the {name} part was not asked for (--parts)."
        elif name == "naturalness" and not has_detector:
            missing[key] = "not measured: naturalness needs a detector (--detector)."
        elif isinstance(fig, dict) and fig.get("note"):
            missing[key] = str(fig["note"])
        elif isinstance(part, dict) and part.get("skipped"):
            missing[key] = str(part["skipped"])
        elif isinstance(fig, dict) and fig.get("n") == 0:
            missing[key] = "no item could be decided."
        else:
            missing[key] = "not measured for this simulator."
    return metrics, missing


async def _real_users(data: list[Conversation], intents: list[Intent], detector: Detector | None, settings: UserEvalSettings,
                      out: Path) -> RealUsers:
    """The held-out users measured like the simulators (where a measure applies to real data)."""
    wanted = {i.id for i in intents}
    matched = [c for c in data if c.intent_id in wanted] or data[: len(intents)]
    metrics: dict[str, Any] = dict(conversation_figures(matched, settings))
    if detector is not None:
        cache = out / "parts" / "real_users.naturalness.json"
        saved = _load(cache)
        if saved.get("detector") != detector.name:
            texts = [m.content for c in matched for m in c.user_turns()]
            saved = {"detector": detector.name, **(await naturalness_part(texts, detector, settings))}
            _save(cache, saved)
        metrics["naturalness"] = saved["naturalness"]
    return {"conversations": len(matched), "metrics": metrics}


def held_out_conversations(source: str, split: str, limit: int | None) -> list[Conversation]:
    """Up to ``limit`` conversations of ``source`` (a file or a hub dataset) that have an assistant reply."""
    from itertools import islice

    from ...prepare.ingest import conversations_from

    convs = (c for c in conversations_from(source, split=split) if any(m.role == "assistant" for m in c.messages))
    return list(islice(convs, limit))


def intents_to_simulate(path: str | None, data: list[Conversation], n: int) -> list[Intent]:
    """The intents to simulate: a file, else the held-out conversations' own, else the built-in set."""
    import json

    from ...intents import load_intents

    if path:
        return load_intents(path)[:n]
    own = [Intent(id=c.intent_id, text=c.intent) for c in data if c.intent]
    if own:
        return list({i.id: i for i in own}.values())[:n]
    rows = [json.loads(line) for line in package_lines("intents.jsonl")]
    return [Intent(id=r["id"], text=r["intent"]) for r in rows][:n]
