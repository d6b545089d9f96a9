"""Replay against real people: the ``replay`` part of ``eval-user``.

Every real conversation is replayed point by point. A *point* is where the person spoke (before
their first turn, and after each assistant reply they answered) or stopped (after the last reply).
At each point the simulator gets the intent and the real history before it and

* gives P(end) there (after a reply: whether it would stop where the person went on, or stopped);
* drafts its next turn under the guardrails, ``replay_drafts`` times (ending is not allowed for
  these drafts: they are what it would say), where the person spoke.

All points of all conversations run concurrently, so a local model batches them as it batches a
simulation's turns. The figures, each with a 95% interval from resampling whole conversations:

``stop``        ``f1``, ``precision``, ``recall`` of ending, against where the person stopped,
                with the P(end) threshold tuned out of sample (folds of conversations, as
                termination F1), and ``auroc`` of P(end);
``turn_words``  the distance (Wasserstein-1, in words) between the simulator's and the people's
                words-per-turn distributions, first turns and follow-ups apart, both kept;
``lexical``     MATTR, HD-D and Yule's K of each conversation's user text (the people's turns; the
                simulator's first draft at each point), as the simulator's mean z-scored against
                the people's (0: like the people; its sign says which way);
``next_turn``   cosine similarity (TF-IDF of words) between a draft and the person's actual next
                turn, averaged over drafts and points;
``controls``    the same figures for people against people (the conversations split in halves at
                random: one half plays the simulator) and for the simulator against itself (its
                first drafts against its second), so every figure has a scale: a simulator is as
                human as the people are to each other when its figure reaches the first control.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ...conversation import Conversation, Usage, usage_totals
from ...models.base import ContextOverflow
from ...user import SimulatedUser, derive_seed
from ..metrics import Figure, bootstrap, figure
from ..text import words
from .metrics import best_threshold, end_scores, hdd, mattr, yule_k
from .parts import FOLDS, MIN_CONVERSATIONS, Simulator, UserEvalSettings, alignment_part, out_of_sample, scorable, termination_part
from .results import TerminationPoint

LEXICAL = {"mattr": mattr, "hdd": hdd, "yule_k": yule_k}


@dataclass
class Point:
    """Where a person spoke or stopped, in one of the replayed conversations."""

    conversation: int  #: index of the conversation
    spoken: int  #: the person's turns before this point
    history: list[dict[str, str]]  #: the real conversation before it
    human: str | None  #: what the person said next (None: they stopped here)


def points_of(convs: Sequence[Conversation]) -> list[Point]:
    """Every point of every conversation, in order."""
    out = []
    for index, conv in enumerate(convs):
        chat = [m.chat() for m in conv.messages]
        spoken = 0
        for at, message in enumerate([*chat, None]):
            if message is None or message["role"] == "user":
                if at == 0 or (at > 0 and chat[at - 1]["role"] == "assistant"):
                    out.append(Point(index, spoken, chat[:at], message["content"] if message else None))
                spoken += message is not None
    return out


def replayable(data: Sequence[Conversation]) -> list[Conversation]:
    """The conversations a replay can use: a person's turn and an assistant's reply at least."""
    return [c for c in data if c.user_turns() and any(m.role == "assistant" for m in c.messages)]


async def replay_part(sim: Simulator, data: list[Conversation], settings: UserEvalSettings, end_points: list[TerminationPoint] | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """The replay figures of ``sim`` on the real conversations ``data`` (see the module's docstring).
    ``end_points``: P(end) after every reply, when the alignment part already read them off the
    model's logits on the same conversations (else they are asked for here)."""
    started = time.perf_counter()
    convs = replayable(data)
    if not convs:
        return {"skipped": "no conversation with a person's turn and an assistant reply to replay"}
    beyond_context = 0
    if end_points is None or not {p["conversation"] for p in end_points} <= {c.id for c in convs}:
        end_points = None
        if scorable(sim.model) is not None:  # a local model: P(end) at every point in one pass over each conversation
            end_points = (await alignment_part(sim, convs, settings)).get("end_points")
        if end_points is None:
            stops = await termination_part(sim, convs, {}, settings)
            end_points, beyond_context = stops["points"], stops.get("beyond_context", 0)
    points = [p for p in points_of(convs) if p.human is not None]
    spent = Usage()
    drafts = await _drafts(sim, convs, points, settings, progress, spent)
    unfit = sum(1 for made in drafts if not any(made))
    human = Sample.of_people(convs, points, drafts)  # the people's turns where the simulator drafted
    everyone = Sample.of_people(convs)
    simulated = Sample.of_drafts(convs, points, drafts, 0)
    rng = random.Random(settings.seed)
    halves = list(range(len(convs)))
    rng.shuffle(halves)
    first_half, second_half = sorted(halves[: len(convs) // 2]), sorted(halves[len(convs) // 2 :])
    second = Sample.of_drafts(convs, points, drafts, 1) if settings.replay_drafts > 1 else None
    part: dict[str, Any] = {
        "stop": stop_figures(end_points, settings),
        "turn_words": turn_words(simulated, human, settings),
        "lexical": lexical(simulated, human, settings),
        "next_turn": next_turn(points, drafts, settings),
        "controls": {
            "human_vs_human": {
                "stop": length_rule(every_stop(convs), [convs[i].id for i in first_half], settings),
                "turn_words": turn_words(everyone.only(first_half), everyone.only(second_half), settings),
                "lexical": lexical(everyone.only(first_half), everyone.only(second_half), settings),
                "next_turn": people_next_turn(points, settings),
                "how": "the conversations split in halves at random; the first half plays the simulator, the second the people",
            },
            "simulator_vs_itself": {
                "stop": figure(None, note="a simulator gives one P(end) per point: there is nothing to pair it with"),
                **({"turn_words": turn_words(simulated, second, settings), "lexical": lexical(simulated, second, settings),
                    "next_turn": draft_agreement(points, drafts, settings)} if second is not None else
                   {"note": "needs --replay-drafts 2 or more (its first drafts against its second)"}),
                "how": "the simulator's first draft at each point against its second",
            },
        },
        "conversations": len(convs),
        "points": len(points) + len(convs),  # every turn a person spoke, and where each stopped
        "drafts": settings.replay_drafts,
        "points_without_drafts": unfit,  #: where every draft was refused, or the history did not fit the model's context
        "stop_points_beyond_context": beyond_context,
        "seconds": round(time.perf_counter() - started, 2),
        "tokens": usage_totals({"user": spent}),
    }
    return part


async def _drafts(sim: Simulator, convs: list[Conversation], points: list[Point], settings: UserEvalSettings,
                  progress: bool, spent: Usage) -> list[list[str | None]]:
    """``replay_drafts`` drafts at each point, under the guardrails with ending not allowed (their
    tokens added to ``spent``)."""
    from tqdm.auto import tqdm

    user = SimulatedUser(sim.model, replace(settings.guardrails, min_turns=None, end_threshold=None))
    limit = asyncio.Semaphore(settings.concurrency)
    bar = tqdm(total=len(points) * settings.replay_drafts, desc="replaying", unit="draft", leave=False, disable=not progress)

    async def one(point: Point, k: int) -> str | None:
        conv = convs[point.conversation]
        try:
            async with limit:
                turn = await user.next_turn(conv.intent, point.history, seed=derive_seed(settings.seed, "replay", conv.id, point.spoken, k),
                                            conversation=f"replay:{conv.id}@{point.spoken}#{k}")
        except ContextOverflow:
            return None  # the history does not fit the model's context: no draft here
        finally:
            bar.update(1)
        spent.merge(turn.usage)
        return turn.text

    try:
        flat = await asyncio.gather(*[one(p, k) for p in points for k in range(settings.replay_drafts)])
    finally:
        bar.close()
    n = settings.replay_drafts
    return [list(flat[i * n : (i + 1) * n]) for i in range(len(points))]


@dataclass
class Sample:
    """User turns by conversation: each conversation's first turn and its follow-ups."""

    first: list[str | None]  #: per conversation
    follow: list[list[str]]  #: per conversation

    @classmethod
    def of_people(cls, convs: list[Conversation], points: list[Point] | None = None,
                  drafts: list[list[str | None]] | None = None) -> Sample:
        """The people's turns: all of them, or (given ``points`` and their ``drafts``) those at the
        points where the simulator drafted, so that both sides are measured at the same points."""
        if points is None or drafts is None:
            turns = [[m.content for m in c.user_turns()] for c in convs]
            return cls([t[0] if t else None for t in turns], [t[1:] for t in turns])
        return cls.of_drafts(convs, points, [[p.human] if any(made) else [None] for p, made in zip(points, drafts)], 0)

    @classmethod
    def of_drafts(cls, convs: list[Conversation], points: list[Point], drafts: list[list[str | None]], k: int) -> Sample:
        first: list[str | None] = [None] * len(convs)
        follow: list[list[str]] = [[] for _ in convs]
        for point, made in zip(points, drafts):
            text = made[k] if k < len(made) else None
            if text is None:
                continue
            if point.spoken == 0:
                first[point.conversation] = text
            else:
                follow[point.conversation].append(text)
        return cls(first, follow)

    def only(self, indices: Sequence[int]) -> Sample:
        return Sample([self.first[i] for i in indices], [self.follow[i] for i in indices])

    def text(self, i: int) -> str:
        return " ".join([t for t in [self.first[i]] if t] + self.follow[i])

    def __len__(self) -> int:
        return len(self.first)


def _resampled(n: int, settings: UserEvalSettings, statistic: Callable[[Sequence[int]], float | None]):
    """``statistic`` over all ``n`` conversations and its bootstrap interval over them."""
    import math

    def safe(idx) -> float:
        value = statistic(list(idx))
        return math.nan if value is None else value

    return statistic(list(range(n))), bootstrap(n, safe, resamples=settings.resamples, seed=settings.seed)


def _paired(a: int, b: int, settings: UserEvalSettings, statistic: Callable[[Sequence[int], Sequence[int]], float | None]):
    """``statistic`` over two samples of conversations, and its interval resampling each."""
    import math

    import numpy as np

    value = statistic(list(range(a)), list(range(b)))
    rng = np.random.default_rng(settings.seed)
    draws = []
    for _ in range(settings.resamples if a and b else 0):
        v = statistic(list(rng.integers(0, a, a)), list(rng.integers(0, b, b)))
        if v is not None and not math.isnan(v):
            draws.append(v)
    interval = {"low": float(np.quantile(draws, 0.025)), "high": float(np.quantile(draws, 0.975))} if draws else None
    return value, interval


# --- stop ---------------------------------------------------------------------------------


def stop_figures(points: list[TerminationPoint], settings: UserEvalSettings) -> dict[str, Figure]:
    """F1, precision and recall of ending (threshold tuned out of sample) and AUROC of P(end)."""
    probs = [p["prob"] for p in points]
    ended = [p["ended"] for p in points]
    members = _members(points)
    out = {"auroc": _auroc_figure(probs, ended, members, settings)}
    positives = sum(ended)
    if len(members) < MIN_CONVERSATIONS or positives < FOLDS:
        note = (f"too few conversations to tune a threshold out of sample ({len(members)} conversations with {positives} stops; "
                f"at least {MIN_CONVERSATIONS} conversations and {FOLDS} stops are needed).")
        return out | {key: figure(None, None, len(points), note=note) for key in ("f1", "precision", "recall")}
    predicted, thresholds = out_of_sample(probs, ended, members, settings.seed)
    return out | _decision_figures(predicted, ended, members, settings, threshold=float(statistics.median(thresholds)))


def _decision_figures(said: Sequence[bool], ended: Sequence[bool], members: list[list[int]], settings: UserEvalSettings,
                      **extra: Any) -> dict[str, Figure]:
    """F1, precision and recall of the stop decisions ``said`` against ``ended``, each with an
    interval resampling conversations (``members``: each conversation's point indices)."""
    out = {}
    for key in ("f1", "precision", "recall"):
        def score(idx, key=key) -> float:
            chosen = [k for g in idx for k in members[g]]
            return getattr(end_scores([float(said[k]) for k in chosen], [ended[k] for k in chosen], 0.5), key)

        out[key] = figure(score(range(len(members))), bootstrap(len(members), score, resamples=settings.resamples, seed=settings.seed),
                          len(said), **extra)
    return out


def _members(points: list[TerminationPoint]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        groups.setdefault(p["conversation"], []).append(i)
    return list(groups.values())


def _auroc(probs: Sequence[float], ended: Sequence[bool]) -> float | None:
    if len(set(ended)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([int(e) for e in ended], probs))


def _auroc_figure(probs, ended, members, settings: UserEvalSettings) -> Figure:
    def statistic(idx) -> float | None:
        chosen = [k for g in idx for k in members[g]]
        return _auroc([probs[k] for k in chosen], [ended[k] for k in chosen])

    value, interval = _resampled(len(members), settings, statistic)
    if value is None:
        return figure(None, None, len(probs), note="every point has the same outcome: AUROC needs stops and turns both")
    return figure(value, interval, len(probs))


def every_stop(convs: list[Conversation]) -> list[TerminationPoint]:
    """Every point after a reply in ``convs``, whether the person stopped there (no model needed)."""
    from .perplexity import end_points

    return [{"conversation": c.id, "after_reply": reply, "ended": ended, "prob": 0.0} for c in convs for _, reply, ended in end_points(c)]


def length_rule(points: list[TerminationPoint], learn_from: Sequence[str], settings: UserEvalSettings) -> dict[str, Figure]:
    """People against people, for stopping: a rule that knows only how many replies came before
    ("stop after N"), with N learnt from half of the people, scored on the other half."""
    learn = set(learn_from)
    train = [p for p in points if p["conversation"] in learn]
    test = [p for p in points if p["conversation"] not in learn]
    if not train or not test:
        return {"f1": figure(None, note="too few conversations to split in halves")}
    length = [float(p["after_reply"]) for p in train]
    cut = best_threshold([x / max(length) for x in length], [p["ended"] for p in train]).threshold * max(length)
    members = _members(test)
    ended = [p["ended"] for p in test]
    out = _decision_figures([p["after_reply"] >= cut for p in test], ended, members, settings, stop_after_replies=cut)
    out["auroc"] = _auroc_figure([float(p["after_reply"]) for p in test], ended, members, settings)
    return out


# --- words per turn -------------------------------------------------------------------------


def turn_words(simulated: Sample, people: Sample, settings: UserEvalSettings) -> dict[str, Any]:
    """Wasserstein-1 distance (in words) between words-per-turn distributions, first turns and
    follow-ups apart, with both distributions kept."""
    from scipy.stats import wasserstein_distance

    def counts(sample: Sample, idx: Sequence[int], first: bool) -> list[int]:
        if first:
            return [len(sample.first[i].split()) for i in idx if sample.first[i]]  # type: ignore[union-attr]
        return [len(t.split()) for i in idx for t in sample.follow[i]]

    out: dict[str, Any] = {}
    for key, first in (("first", True), ("follow_up", False)):
        def distance(a: Sequence[int], b: Sequence[int], first=first) -> float | None:
            x, y = counts(simulated, a, first), counts(people, b, first)
            return float(wasserstein_distance(x, y)) if x and y else None

        value, interval = _paired(len(simulated), len(people), settings, distance)
        sim_counts = counts(simulated, range(len(simulated)), first)
        human_counts = counts(people, range(len(people)), first)
        out[key] = figure(value, interval, len(sim_counts), simulator=sim_counts, human=human_counts,
                          **({} if value is not None else {"note": "no turns of this kind on one side"}))
    return out


# --- lexical diversity ------------------------------------------------------------------------


def lexical(simulated: Sample, people: Sample, settings: UserEvalSettings) -> dict[str, Figure]:
    """Each measure's mean over the simulator's conversations, as a z-score against the people's
    (their mean and standard deviation over conversations)."""
    out: dict[str, Figure] = {}
    for name, measure in LEXICAL.items():
        mine = [measure(words(simulated.text(i))) for i in range(len(simulated))]
        theirs = [measure(words(people.text(i))) for i in range(len(people))]

        def z(a: Sequence[int], b: Sequence[int]) -> float | None:
            x: list[float] = [v for v in (mine[i] for i in a) if v is not None]
            y: list[float] = [v for v in (theirs[i] for i in b) if v is not None]
            if not x or len(y) < 2:
                return None
            spread = statistics.stdev(y)
            return (statistics.fmean(x) - statistics.fmean(y)) / spread if spread > 0 else None

        value, interval = _paired(len(mine), len(theirs), settings, z)
        known_mine = [v for v in mine if v is not None]
        known_theirs = [v for v in theirs if v is not None]
        out[name] = figure(value, interval, len(known_mine),
                           simulator_mean=statistics.fmean(known_mine) if known_mine else None,
                           human_mean=statistics.fmean(known_theirs) if known_theirs else None,
                           **({} if value is not None else {"note": "too few texts long enough for this measure"}))
    return out


# --- next turn ------------------------------------------------------------------------------


def _similarity(pairs: list[tuple[int, str, str]], settings: UserEvalSettings) -> Figure:
    """Mean TF-IDF cosine similarity of text pairs (each with its conversation's index), with an
    interval over conversations."""
    if not pairs:
        return figure(None, note="no pairs to compare")
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [t for _, a, b in pairs for t in (a, b)]
    vectors = TfidfVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b").fit_transform(texts)
    sims = [float(vectors[2 * i].multiply(vectors[2 * i + 1]).sum()) for i in range(len(pairs))]
    by_conv: dict[int, list[float]] = {}
    for (conv, _, _), s in zip(pairs, sims):
        by_conv.setdefault(conv, []).append(s)
    groups = list(by_conv.values())

    def mean(idx) -> float | None:
        chosen = [s for g in idx for s in groups[g]]
        return sum(chosen) / len(chosen) if chosen else None

    value, interval = _resampled(len(groups), settings, mean)
    return figure(value, interval, len(pairs))


def next_turn(points: list[Point], drafts: list[list[str | None]], settings: UserEvalSettings) -> Figure:
    pairs = [(p.conversation, d, p.human) for p, made in zip(points, drafts) for d in made if d and p.human]
    return _similarity(pairs, settings)


def people_next_turn(points: list[Point], settings: UserEvalSettings) -> Figure:
    """People against people: each person's next turn against another person's turn at the same
    point of another conversation (same number of turns before it), paired at random."""
    rng = random.Random(settings.seed)
    by_step: dict[int, list[Point]] = {}
    for p in points:
        by_step.setdefault(p.spoken, []).append(p)
    pairs = []
    for same in by_step.values():
        if len(same) < 2:
            continue
        others = same[1:] + same[:1]
        rng.shuffle(others)
        for a, b in zip(same, others):
            if a.conversation != b.conversation and a.human and b.human:
                pairs.append((a.conversation, b.human, a.human))
    return _similarity(pairs, settings)


def draft_agreement(points: list[Point], drafts: list[list[str | None]], settings: UserEvalSettings) -> Figure:
    """The simulator against itself: its first draft at each point against its second."""
    pairs = [(p.conversation, made[0], made[1]) for p, made in zip(points, drafts) if len(made) > 1 and made[0] and made[1]]
    return _similarity(pairs, settings)
