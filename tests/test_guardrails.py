"""The four guardrails: unit cases at the edges and properties over arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from userlm.guardrails import (
    GuardrailConfig,
    check_draft,
    copies_intent,
    first_word,
    normalise,
    starts_with_banned_word,
)

DEFAULT = GuardrailConfig()
INTENT = "You are a user chatting with an assistant to get a vegan lasagna recipe that takes under an hour to cook"


def reason(text, *, ended=False, earlier=(), intent=INTENT, config=DEFAULT):
    return check_draft(text, ended=ended, intent=intent, earlier_user_turns=list(earlier), config=config).reason


@pytest.mark.parametrize(
    "text",
    ["I need a recipe now", "i need a recipe now", "I'm looking for lasagna", "You should tell me more",
     "YOU there, give me lasagna", "Here is my question about pasta", "Here's what I want today",
     '"I want lasagna recipes please"', "  - here goes nothing at all", "(You know what I mean)"],
)
def test_first_word_filter_refuses_banned_first_words(text):
    assert reason(text) == "first_word"


@pytest.mark.parametrize(
    "text",
    ["If you could help with lasagna", "Your lasagna recipe was fine", "Hereby I ask for pasta",
     "Hello can you help with dinner", "Youtube video recipes for lasagna", "Is vegan lasagna hard to make"],
)
def test_first_word_filter_passes_words_that_only_start_alike(text):
    assert reason(text) is None


def test_first_word_list_is_configurable_and_can_be_switched_off():
    config = GuardrailConfig(first_words=("please",))
    assert reason("Please give me a recipe", config=config) == "first_word"
    assert reason("I need a recipe today", config=config) is None
    assert reason("I need a recipe today", config=GuardrailConfig(first_words=())) is None


def test_first_word_skips_leading_punctuation_and_digits_do_not_count():
    assert first_word("...  ¿Hola amigo") == "Hola"
    assert first_word("123 apples") == ""
    assert not starts_with_banned_word("", ("I",))


@pytest.mark.parametrize(
    "text,expected",
    [("two words", "too_short"), ("three small words", None), (" ".join(["w"] * 25), None),
     (" ".join(["w"] * 26), "too_long")],
)
def test_length_bounds_are_inclusive(text, expected):
    assert reason(text, intent=None) == expected


def test_length_bounds_can_be_switched_off():
    config = GuardrailConfig(min_words=None, max_words=None)
    assert reason("ok", config=config) is None
    assert reason(" ".join(["w"] * 200), config=config) is None


def test_empty_draft_is_always_refused():
    assert reason("   ", config=GuardrailConfig(min_words=None)) == "empty"


def test_repeat_of_an_earlier_turn_is_refused_after_normalisation():
    earlier = ["What about the cheese, though?"]
    assert reason("what about the CHEESE though", earlier=earlier) == "repeats_turn"
    assert reason("What about the cheese, then?", earlier=earlier) is None


def test_normalise_folds_case_width_and_punctuation():
    assert normalise("Ｃａｆé —  LATTE!!") == "café latte"
    assert normalise("a_b") == "a b"


def test_copying_the_intent_is_refused():
    assert reason("get a vegan lasagna recipe that takes under an hour to cook") == "copies_intent"
    # a short draft made only of intent words (at least min_copy_words words) is a copy
    assert reason("vegan lasagna recipe that takes") == "copies_intent"
    # four words are below min_copy_words: a natural short request
    assert reason("vegan lasagna recipe please") is None
    # eleven consecutive intent words among own words are below the 12-word run
    assert reason("hey so, get a vegan lasagna recipe that takes under an hour to? thanks") is None


def test_copy_run_is_capped_by_the_intent_length():
    short = "Learn about photosynthesis in plants"
    assert copies_intent("so learn about photosynthesis in plants please", short, DEFAULT)
    assert not copies_intent("so learn about photosynthesis in trees please", short, DEFAULT)


def test_repetition_check_can_be_switched_off():
    config = GuardrailConfig(block_repetition=False)
    assert reason("get a vegan lasagna recipe that takes under an hour to cook", config=config) is None


def test_termination_control():
    never = GuardrailConfig()
    assert reason("", ended=True, earlier=["a b c"] * 10, config=never) == "premature_end"
    after_two = GuardrailConfig(min_turns=2)
    assert reason("", ended=True, earlier=["a b c"], config=after_two) == "premature_end"
    verdict = check_draft("", ended=True, intent=None, earlier_user_turns=["a", "b"], config=after_two)
    assert verdict.accepted and verdict.ended
    # asking for a threshold allows ends from the second turn on, unless min_turns says otherwise
    assert GuardrailConfig(end_threshold=0.5).end_allowed(1)
    assert not GuardrailConfig(end_threshold=0.5).end_allowed(0)
    assert not GuardrailConfig(end_threshold=0.5, min_turns=3).end_allowed(2)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError):
        GuardrailConfig(max_attempts=0)
    with pytest.raises(ValueError):
        GuardrailConfig(end_threshold=1.5)
    with pytest.raises(ValueError):
        GuardrailConfig(min_words=10, max_words=5)


words = st.lists(st.text(alphabet=st.characters(categories=("L", "N")), min_size=1, max_size=8), min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(words)
def test_property_accepted_drafts_respect_every_bound(ws):
    text = " ".join(ws)
    verdict = check_draft(text, ended=False, intent=INTENT, earlier_user_turns=[], config=DEFAULT)
    if verdict.accepted:
        assert 3 <= len(text.split()) <= 25
        assert first_word(text).casefold() not in {"i", "you", "here"}
        assert not copies_intent(text, INTENT, DEFAULT)


ascii_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.;:!?'-", min_size=1, max_size=120)


@settings(max_examples=200, deadline=None)
@given(ascii_text, st.sampled_from(["", " ", "!", "  ...", "\n"]))
def test_property_changing_case_and_punctuation_does_not_hide_a_repeat(text, noise):
    config = GuardrailConfig(first_words=(), min_words=None, max_words=None)
    verdict = check_draft(text.upper() + noise, ended=False, intent=None, earlier_user_turns=[text], config=config)
    if any(c.isalnum() for c in text):
        assert verdict.reason == "repeats_turn"
    else:
        assert verdict.reason in {"empty", "repeats_turn"}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta"]), min_size=12, max_size=40),
       st.integers(0, 20))
def test_property_any_long_slice_of_the_intent_is_a_copy(intent_words, start):
    intent = " ".join(intent_words)
    start = min(start, len(intent_words) - 12)
    slice_ = " ".join(intent_words[start : start + 12])
    assert copies_intent(f"well {slice_} ok", intent, DEFAULT)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 30), st.integers(0, 12))
def test_property_end_is_allowed_exactly_from_min_turns(turns, floor):
    config = GuardrailConfig(min_turns=floor)
    assert config.end_allowed(turns) == (turns >= floor)
