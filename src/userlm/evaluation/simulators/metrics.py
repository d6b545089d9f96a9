"""Intrinsic measures of a user simulator, as pure functions of text and probabilities.

* first-turn diversity: 100 x (1 - mean pairwise Jaccard similarity of the unigram sets of N
  first turns), with distinct-1 and distinct-2 (distinct n-grams over all n-grams);
* intent decomposition: the share of the intent's content words (stopwords removed) that a
  generated turn repeats; lower means the user reveals the task gradually, as people do;
* dialogue termination: precision, recall and F1 of the "end" class at a threshold on the
  model's probability of ending, the whole threshold curve, and the threshold with the best F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from ..text import content_words, words


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def first_turn_diversity(turns: Sequence[str]) -> float:
    """100 x (1 - mean pairwise Jaccard similarity of the turns' unigram sets)."""
    sets = [set(words(t)) for t in turns]
    pairs = list(combinations(sets, 2))
    if not pairs:
        return 0.0
    return 100.0 * (1.0 - sum(jaccard(a, b) for a, b in pairs) / len(pairs))


def distinct_n(turns: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams, pooled over the turns."""
    grams = [tuple(ws[i : i + n]) for ws in map(words, turns) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def intent_overlap(turn: str, intent: str) -> float:
    """Share of the intent's content words that the turn repeats."""
    wanted = content_words(intent)
    return len(wanted & content_words(turn)) / len(wanted) if wanted else 0.0


@dataclass(frozen=True)
class EndScores:
    threshold: float
    precision: float
    recall: float
    f1: float


def end_scores(probabilities: Sequence[float], ended: Sequence[bool], threshold: float) -> EndScores:
    """Precision, recall and F1 of predicting "the user ends here" when P(end) >= threshold."""
    tp = sum(1 for p, y in zip(probabilities, ended) if p >= threshold and y)
    fp = sum(1 for p, y in zip(probabilities, ended) if p >= threshold and not y)
    fn = sum(1 for p, y in zip(probabilities, ended) if p < threshold and y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return EndScores(threshold, precision, recall, f1)


def end_curve(probabilities: Sequence[float], ended: Sequence[bool]) -> list[EndScores]:
    """Scores at every distinct probability used as the threshold (the whole curve), in one sweep."""
    positives = sum(1 for y in ended if y)
    ordered = sorted(zip(probabilities, ended), key=lambda x: -x[0])
    curve, tp, fp, i = [], 0, 0, 0
    while i < len(ordered):
        threshold = ordered[i][0]
        while i < len(ordered) and ordered[i][0] == threshold:
            tp += ordered[i][1]
            fp += not ordered[i][1]
            i += 1
        precision = tp / (tp + fp)
        recall = tp / positives if positives else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        curve.append(EndScores(threshold, precision, recall, f1))
    return curve[::-1]


def best_threshold(probabilities: Sequence[float], ended: Sequence[bool]) -> EndScores:
    """The point of the curve with the highest F1 (the lowest threshold among ties). A threshold of
    0 ends everywhere whatever the model says, so it is not a choice the model made: a model that
    never gives the end any probability scores 0."""
    curve = [s for s in end_curve(probabilities, ended) if s.threshold > 0]
    return max(curve, key=lambda s: (s.f1, -s.threshold)) if curve else end_scores(probabilities, ended, 0.5)


# --- lexical diversity ----------------------------------------------------------------------
# Three standard measures of a text's lexical diversity, over its lower-cased word tokens:
# MATTR (Covington & McFall 2010): the mean type-token ratio of every window of ``window`` tokens;
# HD-D (McCarthy & Jarvis 2010): the expected type-token ratio of a random sample of ``draws``
#   tokens, from the hypergeometric distribution of each word type (scipy's);
# Yule's K (Yule 1944): 10^4 (sum_i i^2 V_i - N) / N^2, with V_i the number of types seen i times;
#   higher K, more repetition.


def mattr(tokens: Sequence[str], window: int = 25) -> float | None:
    """Moving-average type-token ratio (the plain ratio for a text shorter than ``window``)."""
    if not tokens:
        return None
    if len(tokens) <= window:
        return len(set(tokens)) / len(tokens)
    from collections import Counter

    counts = Counter(tokens[:window])
    total = len(counts)
    for i in range(window, len(tokens)):
        counts[tokens[i]] += 1
        old = tokens[i - window]
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        total += len(counts)
    return total / ((len(tokens) - window + 1) * window)


def hdd(tokens: Sequence[str], draws: int = 42) -> float | None:
    """HD-D: the sum over word types of P(the type is in a random sample of ``draws`` tokens),
    divided by ``draws`` (None for a text shorter than ``draws``)."""
    if len(tokens) < draws:
        return None
    from collections import Counter

    from scipy.stats import hypergeom

    n = len(tokens)
    return float(sum(1.0 - hypergeom.pmf(0, n, count, draws) for count in Counter(tokens).values()) / draws)


def yule_k(tokens: Sequence[str]) -> float | None:
    """Yule's K (None for an empty text)."""
    if not tokens:
        return None
    from collections import Counter

    n = len(tokens)
    spectrum = Counter(Counter(tokens).values())
    return 1e4 * (sum(i * i * v for i, v in spectrum.items()) - n) / (n * n)
