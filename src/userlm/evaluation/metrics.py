"""Statistics for evaluation reports: bootstrap intervals, percentiles, descriptors, and the
typed shapes they are reported in (as written to the reports' JSON)."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from typing import Any, TypedDict

from typing_extensions import NotRequired


class Interval(TypedDict):
    """A bootstrap interval (None: no data to resample)."""

    low: float | None
    high: float | None


class MeanCI(TypedDict):
    """A mean with its bootstrap interval."""

    mean: float | None
    low: float | None
    high: float | None
    n: int  #: values averaged


class Descriptor(TypedDict):
    """Mean, variance and range of some values (all None when there are none)."""

    mean: float | None
    variance: float | None
    min: float | None
    max: float | None


class AptitudeUnreliability(TypedDict):
    aptitude: float | None  #: 0-100
    unreliability: float | None  #: 0-100


class Figure(TypedDict):
    """One reported figure: its value, its bootstrap interval and what it was measured over,
    with what the measure adds (a note when there is no value, a threshold, a curve, ...)."""

    value: float | None
    low: float | None
    high: float | None
    n: int | None  #: items it was measured over
    note: NotRequired[str]  #: why there is no value, when there is none
    how: NotRequired[str]  #: how it was measured, when there is more than one way
    tokens: NotRequired[int]  #: perplexity: target tokens scored
    dropped_targets: NotRequired[int]  #: perplexity: user turns left out (longer than the model's context)
    threshold: NotRequired[float]  #: termination: the P(end) threshold to advise
    detector: NotRequired[str]  #: naturalness: the detector's name
    unscored: NotRequired[int]  #: naturalness: texts the detector gave no score
    undecided: NotRequired[int]  #: adherence: items that could not be decided
    # termination F1 (see userlm.evaluation.simulators.parts.termination_figure)
    precision: NotRequired[float]
    recall: NotRequired[float]
    folds: NotRequired[int]  #: the threshold is tuned on the other folds of conversations
    fold_thresholds: NotRequired[list[float]]
    positives: NotRequired[int]  #: points where the real user ended
    conversations: NotRequired[int]
    curve: NotRequired[list[dict[str, float]]]  #: precision, recall and F1 by threshold
    in_sample: NotRequired[dict[str, Any]]  #: the best F1 tuned and scored on the same conversations (labelled optimistic)
    f1_at_half: NotRequired[dict[str, float]]  #: precision, recall and F1 at threshold 0.5
    always_end_f1: NotRequired[float]  #: the F1 of ending at every point


def figure(value: float | None, interval: Interval | None = None, n: int | None = None, **extra: Any) -> Figure:
    """A figure; ``extra`` holds the keys :class:`Figure` names beyond the four it always has."""
    out: dict[str, Any] = {"value": value, "low": interval["low"] if interval else None, "high": interval["high"] if interval else None, "n": n}
    out.update(extra)
    return out  # type: ignore[return-value]


def mean_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> MeanCI:
    """Mean with a percentile-bootstrap interval."""
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return {"mean": sum(values) / n, "low": means[int(tail * resamples)], "high": means[min(resamples - 1, int((1 - tail) * resamples))], "n": n}


def paired_difference_ci(first: dict[str, float], second: dict[str, float], *, resamples: int = 2000, seed: int = 0) -> MeanCI:
    """Mean of ``first[k] - second[k]`` over the keys both have, with a bootstrap interval over those keys."""
    keys = sorted(set(first) & set(second))
    return mean_ci([first[k] - second[k] for k in keys], resamples=resamples, seed=seed)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def aptitude_unreliability(scores_by_task: dict[str, list[float]]) -> AptitudeUnreliability:
    """Lost in Conversation's aptitude (mean over tasks of the 90th percentile of repeated
    scores) and unreliability (mean over tasks of the 90th minus the 10th percentile), 0-100."""
    tasks = [v for v in scores_by_task.values() if v]
    if not tasks:
        return {"aptitude": None, "unreliability": None}
    return {
        "aptitude": 100 * statistics.fmean(percentile(v, 90) for v in tasks),
        "unreliability": 100 * statistics.fmean(percentile(v, 90) - percentile(v, 10) for v in tasks),
    }


def describe(values: Sequence[float]) -> Descriptor:
    if not values:
        return {"mean": None, "variance": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "variance": statistics.pvariance(values), "min": min(values), "max": max(values)}


def bootstrap(n: int, statistic, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile-bootstrap interval of ``statistic(indices)`` over ``n`` units resampled with
    replacement (``statistic`` takes a numpy array of indices)."""
    import numpy as np

    if n == 0:
        return {"low": None, "high": None}
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return {"low": None, "high": None}
    tail = (1 - level) / 2
    return {"low": float(np.quantile(values, tail)), "high": float(np.quantile(values, 1 - tail))}
