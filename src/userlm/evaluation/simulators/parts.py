"""The parts of a user-simulator evaluation: each measures one simulator (alignment,
termination, conversations, naturalness, role and intent adherence) and returns its figures.
:mod:`.evaluate` runs them, resumes them and writes the report."""

from __future__ import annotations

import asyncio
import math
import random
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from ...conversation import Conversation, Usage, token_totals, usage_totals
from ...guardrails import GuardrailConfig
from ...intents import Intent
from ...models.base import ChatModel, ChatReply, ContextOverflow, HasWeights, MapsShards, ProbesEnd, UserModel, UserTurnRequest, WrapsChat
from ...models.doubles.function import FunctionAssistant
from ...models.handle import ConversationHandle
from ...prompts import fill_prompt, load_prompt
from ...simulation import LoopHooks, RunSettings, converse, new_conversation, simulate_async
from ...user import SimulatedUser, derive_seed
from ..metrics import Figure, bootstrap, figure
from ..text import words
from .detectors import Detector
from .judge import CachedJudge
from .metrics import best_threshold, distinct_n, end_curve, end_scores, first_turn_diversity, intent_overlap, jaccard
from .results import (
    AdherenceItem,
    AlignmentPart,
    ConversationsPart,
    IntentPart,
    NaturalnessPart,
    RolePart,
    ScoredConversation,
    TerminationPart,
    TerminationPoint,
)
from .scenarios import Question, package_lines, pick, role_rule_check, transcript

PARTS = ("alignment", "termination", "conversations", "naturalness", "role", "intent", "replay")


@dataclass
class UserEvalSettings:
    parts: tuple[str, ...] = PARTS
    max_turns: int = 3  #: user turns per simulated conversation
    scenario_limit: int = 50  #: questions / intents per scenario
    end_samples: int = 4  #: drafts per point for simulators that give no probabilities
    replay_drafts: int = 3  #: drafts of the next turn at each point a person spoke (the replay part)
    seed: int = 0
    concurrency: int = 32
    resamples: int = 1000
    max_batch_tokens: int = 16384
    chunk_tokens: int = 4096
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)


@dataclass
class Simulator:
    spec: str
    model: UserModel

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec).strip("_")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def mean_figure(values: Sequence[float], settings: UserEvalSettings) -> Figure:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return figure(_mean(values), bootstrap(len(arr), lambda idx: float(arr[idx].mean()), resamples=settings.resamples, seed=settings.seed), len(arr))


# --- scoring a local model ----------------------------------------------------------------


def scorable(model: UserModel):
    """(loaded model, format) when the simulator is a local causal LM, else None."""
    if isinstance(model, HasWeights):
        return model.loaded, "userlm"
    if isinstance(model, WrapsChat) and isinstance(model.chat, HasWeights):
        return model.chat.loaded, "flipped"
    return None


def score_on_replica(model, conversations: list[Conversation], **options):
    """(format, held-out scores) of ``conversations`` under a replica's model, run in the
    replica's process; None when it is not a local causal LM."""
    from .perplexity import held_out_scores

    found = scorable(model)
    if found is None:
        return None
    loaded, fmt = found
    return fmt, held_out_scores(loaded.model, loaded.tokenizer, conversations, fmt=fmt, **options)


def merge_scores(parts: list, conversations: list[Conversation]):
    """Replicas' held-out scores of their shares as one, in the order of ``conversations``."""
    from .perplexity import HeldOutScores

    by_id: dict[str, list] = {}
    for scores in parts:
        for cid, nll, tokens in zip(scores.conversation_ids, scores.nll, scores.tokens):
            by_id[cid] = [nll, tokens, []]
        for point in scores.end_points:
            by_id[point.conversation][2].append(point)
    order = [c.id for c in conversations if c.id in by_id]
    return HeldOutScores(nll=[by_id[c][0] for c in order], tokens=[by_id[c][1] for c in order], conversation_ids=order,
                         end_points=[p for c in order for p in by_id[c][2]],
                         dropped_targets=sum(scores.dropped_targets for scores in parts))


def perplexity_figure(nll: list[float], tokens: list[int], settings: UserEvalSettings) -> Figure:
    import numpy as np

    nll_a, tok_a = np.asarray(nll), np.asarray(tokens)
    total = int(tok_a.sum())

    def ppl(idx):
        t = tok_a[idx].sum()
        return float(np.exp(nll_a[idx].sum() / t)) if t else float("nan")

    value = math.exp(float(nll_a.sum()) / total) if total else None
    return figure(value, bootstrap(len(nll), ppl, resamples=settings.resamples, seed=settings.seed), len(nll), tokens=total)


FOLDS = 5  #: termination F1 is cross-validated over this many folds of conversations
MIN_CONVERSATIONS = 10  #: fewer cannot tune a threshold out of sample


def out_of_sample(probs: Sequence[float], ended: Sequence[bool], members: list[list[int]], seed: int) -> tuple[list[bool], list[float]]:
    """Whether each point is predicted to end, by a P(end) threshold tuned on the other folds of
    conversations (``members``: each conversation's point indices), and each fold's threshold."""
    order = list(range(len(members)))
    random.Random(seed).shuffle(order)
    predicted = [False] * len(probs)
    thresholds = []
    for fold in range(FOLDS):
        held = set(order[fold::FOLDS])
        train = [k for g in range(len(members)) if g not in held for k in members[g]]
        threshold = best_threshold([probs[k] for k in train], [ended[k] for k in train]).threshold
        thresholds.append(threshold)
        for g in held:
            for k in members[g]:
                predicted[k] = probs[k] >= threshold
    return predicted, thresholds


def termination_figure(points: list[TerminationPoint], settings: UserEvalSettings, how: str) -> Figure:
    """Termination F1 out of sample: the P(end) threshold is tuned on the other folds of conversations
    and applied to each held-out fold; the interval resamples whole conversations. The threshold to
    advise is the median of the folds' thresholds. The in-sample best (tuned and scored on the same
    conversations) is kept, labelled, for reference only."""
    import numpy as np

    if not points:
        return figure(None, how=how, note="no termination points were scored.")
    probs = [p["prob"] for p in points]
    ended = [p["ended"] for p in points]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(p["conversation"], []).append(i)
    members = list(groups.values())
    best = best_threshold(probs, ended)
    at_half = end_scores(probs, ended, 0.5)
    curve = end_curve(probs, ended)
    step = max(1, len(curve) // 200)
    positives = int(np.sum(ended))
    common = dict(
        how=how, positives=positives, conversations=len(members), curve=[s.__dict__ for s in curve[::step]],
        in_sample={"f1": best.f1, "threshold": best.threshold, "precision": best.precision, "recall": best.recall,
                   "label": "tuned and scored on the same conversations: optimistic, for reference only"},
        f1_at_half={"precision": at_half.precision, "recall": at_half.recall, "f1": at_half.f1},
        always_end_f1=end_scores([1.0] * len(points), ended, 0.5).f1,
    )
    if len(members) < MIN_CONVERSATIONS or positives < FOLDS:
        return figure(None, None, len(points), note=(
            f"too few conversations to tune a threshold out of sample ({len(members)} conversations with {positives} ends; "
            f"at least {MIN_CONVERSATIONS} conversations and {FOLDS} ends are needed)."), **common)
    predicted, thresholds = out_of_sample(probs, ended, members, settings.seed)
    said = [1.0 if p else 0.0 for p in predicted]
    scores = end_scores(said, ended, 0.5)

    def f1(idx):
        chosen = [k for g in idx for k in members[g]]
        return end_scores([said[k] for k in chosen], [ended[k] for k in chosen], 0.5).f1

    return figure(scores.f1, bootstrap(len(members), f1, resamples=settings.resamples, seed=settings.seed), len(points),
                  threshold=float(statistics.median(thresholds)), fold_thresholds=thresholds, folds=FOLDS,
                  precision=scores.precision, recall=scores.recall, **common)


async def alignment_part(sim: Simulator, data: list[Conversation], settings: UserEvalSettings, progress: bool = False) -> AlignmentPart:
    from .perplexity import held_out_scores

    found = scorable(sim.model)
    replicas = sim.model if found is None and isinstance(sim.model, MapsShards) and sim.model.can_map() else None
    if found is None and replicas is None:
        return {"skipped": "perplexity needs a local model (hf: or prompted:hf:), or replicas of one"}
    out: AlignmentPart = {"format": found[1] if found is not None else None}
    with_intent = [c for c in data if c.intent]
    for key, convs, use_intent in (("ppl_intent", with_intent, True), ("ppl_no_intent", data, False)):
        if not convs:
            out["ppl_intent"] = figure(None, note="the held-out conversations carry no intents")
            continue
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(desc=f"scoring ({'intent' if use_intent else 'no intent'})", unit="seq", leave=False)
        if replicas is not None:  # replicas score their share of the conversations each
            parts = await replicas.map_shards(score_on_replica, convs, use_intent=use_intent,
                                               max_batch_tokens=settings.max_batch_tokens, chunk_tokens=settings.chunk_tokens)
            if any(part is None for part in parts):
                return {"skipped": "perplexity needs a local model (hf: or prompted:hf:), or replicas of one"}
            out["format"], scores = parts[0][0], merge_scores([part[1] for part in parts], convs)
        else:
            assert found is not None
            loaded, fmt = found
            scores = await asyncio.to_thread(held_out_scores, loaded.model, loaded.tokenizer, convs, fmt=fmt, use_intent=use_intent,
                                             max_batch_tokens=settings.max_batch_tokens, chunk_tokens=settings.chunk_tokens,
                                             progress=None if bar is None else (lambda done: bar.update(done - bar.n)))
        if bar is not None:
            bar.close()
        fig = perplexity_figure(scores.nll, scores.tokens, settings)
        fig["dropped_targets"] = scores.dropped_targets
        per_conversation: list[ScoredConversation] = [{"id": cid, "nll": n, "tokens": t} for cid, n, t in zip(scores.conversation_ids, scores.nll, scores.tokens)]
        if use_intent:
            out["ppl_intent"], out["ppl_intent_per_conversation"] = fig, per_conversation
        else:
            out["ppl_no_intent"], out["ppl_no_intent_per_conversation"] = fig, per_conversation
        if use_intent == bool(with_intent) or key == "ppl_intent":
            out["end_points"] = [TerminationPoint(conversation=p.conversation, after_reply=p.after_reply, ended=p.ended, prob=p.prob)
                                 for p in scores.end_points]
    return out


async def termination_part(sim: Simulator, data: list[Conversation], alignment: AlignmentPart, settings: UserEvalSettings) -> TerminationPart:
    if "end_points" in alignment:
        points = alignment["end_points"]
        how = ("P(the whole reply is <|endconversation|>) under the flipped prompt, from the model's logits"
               if alignment.get("format") == "flipped" else "P(<|endconversation|>) from the model's logits")
        return {"end_f1": termination_figure(points, settings, how), "points": points}
    # No logits here. A server that returns log-probabilities gives P(end) in one short call;
    # otherwise the next turn is drafted ``end_samples`` times and P(end) is the share that end.
    from ...errors import ConfigurationError
    from ...render import user_prompt_text

    use_intent = any(c.intent for c in data)
    limit = asyncio.Semaphore(settings.concurrency)
    probe = sim.model.end_probability if isinstance(sim.model, ProbesEnd) else None
    mode = {"logprobs": probe is not None}

    async def at(conv: Conversation, upto: int, reply: int, ended: bool) -> TerminationPoint | None:
        try:
            return await measure(conv, upto, reply, ended)
        except ContextOverflow:
            return None  # the conversation so far does not fit the model's context: no point here

    async def measure(conv: Conversation, upto: int, reply: int, ended: bool) -> TerminationPoint:
        chat = [m.chat() for m in conv.messages[:upto]]
        intent = conv.intent if use_intent else None

        def point(prob: float) -> TerminationPoint:
            return {"conversation": conv.id, "after_reply": reply, "ended": ended, "prob": prob}

        if mode["logprobs"] and probe is not None:
            try:
                async with limit:
                    return point(await probe(user_prompt_text(intent, chat), derive_seed(settings.seed, conv.id, reply)))
            except ConfigurationError:
                mode["logprobs"] = False
        ends = []
        for k in range(settings.end_samples):
            request = UserTurnRequest(intent=intent, messages=chat, seed=derive_seed(settings.seed, conv.id, reply, k),
                                      allow_end=True, conversation=ConversationHandle(f"{conv.id}@{reply}"))
            async with limit:
                draft = await sim.model.draft(request)
            if draft.end_prob is not None:
                return point(draft.end_prob)
            ends.append(1.0 if draft.ended else 0.0)
        return point(sum(ends) / len(ends))

    from .perplexity import end_points

    jobs = [at(c, i, r, e) for c in data for i, r, e in end_points(c)]
    measured = list(await asyncio.gather(*jobs))
    points = [p for p in measured if p is not None]
    how = ("P(<|endconversation|>) from the server's log-probabilities" if mode["logprobs"]
           else f"the share of {settings.end_samples} sampled drafts that end")
    part: TerminationPart = {"end_f1": termination_figure(points, settings, how), "points": points}
    if len(points) < len(measured):
        part["beyond_context"] = len(measured) - len(points)
    return part


# --- simulated conversations --------------------------------------------------------------


class FixtureAssistant:
    """The offline default assistant: short generic replies chosen per conversation and turn."""

    name = "fixture:generic-assistant"

    def __init__(self) -> None:
        self.lines = package_lines("assistant_replies.txt")

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        return ChatReply(pick(self.lines, seed, len(messages)))


def conversation_figures(convs: list[Conversation], settings: UserEvalSettings) -> ConversationsPart:
    """Diversity, distinct-n and intent overlap of the user turns of ``convs``."""
    import numpy as np

    firsts = [(c.user_turns()[0].content, c.intent or "") for c in convs if c.user_turns()]
    texts = [t for t, _ in firsts]
    out: ConversationsPart = {}
    if len(texts) >= 2:
        sets = [set(words(t)) for t in texts]
        sim = np.zeros((len(sets), len(sets)))
        for i, j in combinations(range(len(sets)), 2):
            sim[i, j] = sim[j, i] = jaccard(sets[i], sets[j])

        def diversity(idx):
            sub = sim[np.ix_(idx, idx)]
            distinct = idx[:, None] != idx[None, :]
            upper = np.triu(distinct, 1)
            return 100.0 * (1.0 - sub[upper].mean()) if upper.any() else float("nan")

        out["first_turn_diversity"] = figure(first_turn_diversity(texts), bootstrap(len(texts), diversity, resamples=settings.resamples, seed=settings.seed), len(texts))
        # ratios over the pooled turns: resampling with replacement would count repeats as
        # duplicates, so no bootstrap interval is given
        out["distinct_1"] = figure(distinct_n(texts, 1), None, len(texts))
        out["distinct_2"] = figure(distinct_n(texts, 2), None, len(texts))
    with_intent = [(c, c.intent) for c in convs if c.intent and c.user_turns()]
    if with_intent:
        out["intent_overlap_first"] = mean_figure([intent_overlap(c.user_turns()[0].content, intent) for c, intent in with_intent], settings)
        per_turn = [intent_overlap(m.content, intent) for c, intent in with_intent for m in c.user_turns()]
        out["intent_overlap_turn"] = mean_figure(per_turn, settings)
        by_position: dict[int, list[float]] = {}
        for c, intent in with_intent:
            for k, m in enumerate(c.user_turns(), 1):
                by_position.setdefault(k, []).append(intent_overlap(m.content, intent))
        out["intent_overlap_by_turn"] = {str(k): _mean(v) for k, v in sorted(by_position.items())}
    return out


async def conversations_part(sim: Simulator, intents: list[Intent], assistant: ChatModel, out: Path, settings: UserEvalSettings,
                             progress: bool) -> ConversationsPart:
    run = await simulate_async(
        intents, SimulatedUser(sim.model, settings.guardrails), assistant, out=out / "transcripts" / f"{sim.slug}.jsonl",
        settings=RunSettings(samples=1, max_turns=settings.max_turns, seed=settings.seed, concurrency=settings.concurrency),
        progress=progress,
    )
    failed = [c for c in run.conversations if c.error is not None or c.end_reason == "guardrail_exhausted"]
    convs = [c for c in run.conversations if c not in failed and c.user_turns()]
    result = conversation_figures(convs, settings)
    result["conversations"] = len(convs)
    result["simulated"] = len(run.conversations)
    result["end_reasons"] = dict(sorted(Counter(str(c.end_reason) for c in run.conversations).items()))
    how = ", ".join(f"{n} {reason}" for reason, n in Counter(c.end_reason for c in failed).items())
    if not convs:
        result["skipped"] = (f"none of the {len(run.conversations)} simulated conversations is usable ({how or 'no user turn'}), "
                             "so there is nothing to measure diversity or intent overlap on.")
        result["warning"] = f"{sim.spec}: {result['skipped']}"
    elif failed:
        result["warning"] = (f"{sim.spec}: {len(failed)} of {len(run.conversations)} simulated conversations failed ({how}); "
                             f"diversity and intent overlap are over the other {len(convs)}.")
    result["transcripts"] = f"transcripts/{sim.slug}.jsonl"
    result["tokens"] = token_totals(run.conversations)
    return result


async def naturalness_part(texts: list[str], detector: Detector, settings: UserEvalSettings) -> NaturalnessPart:
    scores = await detector.human_likelihood(texts)
    kept = [s for s in scores if s is not None]
    fig = mean_figure(kept, settings)
    fig["detector"], fig["unscored"] = detector.name, len(scores) - len(kept)
    return {"naturalness": fig}


# --- scenarios ----------------------------------------------------------------------------


def _spent() -> dict[str, Usage]:
    """A scenario part's tokens, by side: the simulator (user) and the scenario's assistant."""
    return {"user": Usage(), "assistant": Usage()}


async def _two_turns(user: SimulatedUser, intent: Intent, reply_for, run_seed: int,
                     spent: dict[str, Usage]) -> tuple[list[dict[str, str]], str | None]:
    """A first user turn, the scenario's reply, and the user's answer to it: the conversation loop
    with two user turns, the second unanswered. The messages up to the reply, and the second turn
    (None when the user ended or every draft was refused); the user's tokens added to ``spent``."""
    assistant = FunctionAssistant(reply_for, name="scenario")
    conv = new_conversation(intent, 0, user, assistant, run_seed)
    await converse(conv, user, assistant, 2, LoopHooks(answer_last_turn=False))
    spent["user"].merge(conv.usage["user"])
    if conv.error is not None:  # a model that fails is the evaluation's failure, not a verdict on the user
        raise RuntimeError(f"{conv.id}: {conv.error}")
    messages = [m.chat() for m in conv.messages]
    if not messages:
        return [], None
    return messages[:2], messages[2]["content"] if len(messages) > 2 else None


def _scenario_reply(lines: list[str], model: ChatModel | None, instruction: str, key: str, seed: int, spent: dict[str, Usage]):
    async def reply_for(messages: list[dict[str, str]]) -> str:
        if model is None:
            return pick(lines, seed, key)
        chat = [{"role": "system", "content": instruction}] + messages
        reply = await model.reply(chat, seed=derive_seed(seed, key))
        spent["assistant"].add(reply.prompt_tokens, reply.completion_tokens)
        return reply.text.strip()

    return reply_for


async def role_part(sim: Simulator, questions: list[Question], judge: CachedJudge | None, scenario_assistant: ChatModel | None,
                    settings: UserEvalSettings) -> RolePart:
    user = SimulatedUser(sim.model, settings.guardrails)
    hedges = package_lines("hedges.txt")
    spent = _spent()

    async def one(q: Question) -> AdherenceItem:
        intent = Intent(id=f"role:{q.id}", text=q.intent())
        reply_for = _scenario_reply(hedges, scenario_assistant, load_prompt("hedging_assistant.txt"), q.id, settings.seed, spent)
        messages, turn = await _two_turns(user, intent, reply_for, settings.seed, spent)
        item: AdherenceItem = {"id": q.id, "source": q.source, "messages": messages, "user_reply": turn}
        if not messages:
            return item | {"adhered": False, "method": "no first turn"}
        if turn is None:
            return item | {"adhered": True, "method": "ended"}
        if q.options:
            check = role_rule_check(turn, q)
            return item | {"adhered": check.adhered, "method": "rule", "answered_itself": check.answered_itself,
                           "assistant_voice": check.assistant_voice, "mentioned": check.mentioned}
        if judge is None:
            return item | {"adhered": None, "method": "needs --judge"}
        full = messages + [{"role": "user", "content": turn}]
        return item | {"adhered": await judge.yes_no(fill_prompt("role_judge.txt", question=q.question, transcript=transcript(full))), "method": "judge"}

    items = list(await asyncio.gather(*(one(q) for q in questions)))
    return {"role_adherence": _adherence(items, settings), "items": items, "tokens": usage_totals(spent)}


def _adherence(items: list[AdherenceItem], settings: UserEvalSettings) -> Figure:
    """The share of items where the user adhered (items the check could not decide left out)."""
    decided = [1.0 if i["adhered"] else 0.0 for i in items if i.get("adhered") is not None]
    fig = mean_figure(decided, settings)
    fig["undecided"] = len(items) - len(decided)
    if not decided:
        fig["note"] = ("no question to ask." if not items else
                       "no item could be decided" + (" (open questions need a judge: --judge)." if any(i.get("method") == "needs --judge" for i in items) else "."))
    return fig


async def intent_part(sim: Simulator, intents: list[Intent], judge: CachedJudge | None, scenario_assistant: ChatModel | None,
                      settings: UserEvalSettings) -> IntentPart:
    if judge is None:
        return {"intent_adherence": figure(None, note="not measured: intent adherence needs a judge (--judge)."), "items": []}
    user = SimulatedUser(sim.model, settings.guardrails)
    diversions = package_lines("diversions.txt")
    spent = _spent()

    async def one(intent: Intent) -> AdherenceItem:
        reply_for = _scenario_reply(diversions, scenario_assistant, load_prompt("diverting_assistant.txt"), intent.id, settings.seed, spent)
        messages, turn = await _two_turns(user, Intent(id=f"intent:{intent.id}", text=intent.text or ""), reply_for, settings.seed, spent)
        item: AdherenceItem = {"id": intent.id, "messages": messages, "user_reply": turn}
        if not messages:
            return item | {"adhered": False, "method": "no first turn"}
        if turn is None:
            return item | {"adhered": False, "method": "ended instead of steering back"}
        full = messages + [{"role": "user", "content": turn}]
        return item | {"adhered": await judge.yes_no(fill_prompt("intent_judge.txt", intent=intent.text or "", transcript=transcript(full))), "method": "judge"}

    items = list(await asyncio.gather(*(one(i) for i in intents)))
    return {"intent_adherence": _adherence(items, settings), "items": items, "tokens": usage_totals(spent)}
