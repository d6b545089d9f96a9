"""Simulator measures against hand-computed cases."""

from __future__ import annotations

import pytest

from userlm.evaluation.simulators.metrics import best_threshold, distinct_n, end_curve, end_scores, first_turn_diversity, intent_overlap


def test_first_turn_diversity_by_hand():
    # {a, b} vs {a, c}: Jaccard 1/3; identical turns: 1; disjoint: 0
    assert first_turn_diversity(["a b", "a c"]) == pytest.approx(100 * (1 - 1 / 3))
    assert first_turn_diversity(["same words", "Same words!"]) == 0.0
    assert first_turn_diversity(["x y", "z w", "x y"]) == pytest.approx(100 * (1 - (0 + 1 + 0) / 3))
    assert first_turn_diversity(["alone"]) == 0.0


def test_distinct_n_by_hand():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a b", "b c"], 2) == 1.0


def test_intent_overlap_ignores_stopwords():
    intent = "You are a user chatting with an assistant to plan a cheap trip to Lisbon"
    # content words of the intent: plan, cheap, trip, lisbon
    assert intent_overlap("any ideas for a cheap trip?", intent) == pytest.approx(2 / 4)
    assert intent_overlap("hello there", intent) == 0.0


def test_end_scores_on_known_answers():
    probabilities = [0.9, 0.8, 0.3, 0.2, 0.7, 0.1]
    ended = [True, False, True, False, True, False]
    at_half = end_scores(probabilities, ended, 0.5)
    # predicted ends: 0.9 (right), 0.8 (wrong), 0.7 (right); missed: 0.3
    assert (at_half.precision, at_half.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert at_half.f1 == pytest.approx(2 / 3)
    curve = end_curve(probabilities, ended)
    assert [round(s.threshold, 2) for s in curve] == [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    best = best_threshold(probabilities, ended)
    # threshold 0.3: predicted {0.9, 0.8, 0.3, 0.7}: tp 3, fp 1 -> P 3/4, R 1, F1 6/7
    assert best.threshold == pytest.approx(0.3) and best.f1 == pytest.approx(6 / 7)
    perfect = best_threshold([0.9, 0.1, 0.8], [True, False, True])
    assert perfect.f1 == 1.0 and perfect.threshold == pytest.approx(0.8)
