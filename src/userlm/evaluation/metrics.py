"""Statistics for evaluation reports: bootstrap intervals, percentiles, descriptors."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence


def mean_ci(values: Sequence[float], *, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean with a percentile-bootstrap interval."""
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return {"mean": sum(values) / n, "low": means[int(tail * resamples)], "high": means[min(resamples - 1, int((1 - tail) * resamples))], "n": n}


def paired_difference_ci(first: dict[str, float], second: dict[str, float], *, resamples: int = 2000, seed: int = 0) -> dict:
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


def aptitude_unreliability(scores_by_task: dict[str, list[float]]) -> dict:
    """Lost in Conversation's aptitude (mean over tasks of the 90th percentile of repeated
    scores) and unreliability (mean over tasks of the 90th minus the 10th percentile), 0-100."""
    tasks = [v for v in scores_by_task.values() if v]
    if not tasks:
        return {"aptitude": None, "unreliability": None}
    return {
        "aptitude": 100 * statistics.fmean(percentile(v, 90) for v in tasks),
        "unreliability": 100 * statistics.fmean(percentile(v, 90) - percentile(v, 10) for v in tasks),
    }


def describe(values: Sequence[float]) -> dict:
    if not values:
        return {"mean": None, "variance": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "variance": statistics.pvariance(values), "min": min(values), "max": max(values)}


def bootstrap(n: int, statistic, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
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
