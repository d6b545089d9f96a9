"""The token-level turn rules (userlm.models.turn), checked once; each engine's wiring is
checked in its own tests (test_local, test_vllm, test_openai)."""

import pytest

from userlm.models.turn import TurnReader, TurnRules, table

END, EOT, SPACE, NEWLINE, DOT = 9, 8, 1, 2, 3  # token ids of a made-up vocabulary: 1, 2 whitespace; 3 no word
WHITESPACE = [False, True, True, False, False, False, False, False, False, False]
WORDLESS = [False, True, True, True, False, False, False, False, False, False]


def reader(**rules) -> TurnReader:
    return TurnReader(TurnRules(end=END, stops=frozenset({EOT}), **rules), table(WHITESPACE), table(WORDLESS, beyond=True))


def test_an_end_token_as_the_whole_turn_ends_the_conversation():
    turn = reader().read_all([NEWLINE, SPACE, END, 5])
    assert turn.ended and turn.finished and not turn.closed_by_end and turn.tokens == [NEWLINE, SPACE]


def test_an_end_token_after_text_closes_the_turn_and_keeps_it():
    turn = reader().read_all([5, 6, END, 7])
    assert not turn.ended and turn.finished and turn.closed_by_end and turn.tokens == [5, 6]


def test_a_stop_token_closes_the_turn_and_nothing_after_it_is_kept():
    turn = reader().read_all([5, EOT, 6])
    assert turn.finished and not turn.ended and turn.tokens == [5]


def test_the_budget_cuts_the_turn():
    turn = reader(budget=2).read_all([5, 6, 7])
    assert turn.cut and turn.done and not turn.finished and turn.tokens == [5, 6]


def test_p_end_is_read_where_the_content_starts_after_the_opening():
    probs = {0: 0.9, 1: 0.2, 2: 0.7}
    turn = reader(want_end_prob=True, content_offset=1).read_all([NEWLINE, 5, 6], probs.get)
    assert turn.end_prob == 0.2  # after the expected newline, not before it, not later
    turn = reader(want_end_prob=True, content_offset=1).read_all([5, 6], probs.get)
    assert turn.end_prob == 0.9  # content came first: its position is where P(end) is read
    turn = reader(want_end_prob=True, content_offset=1).read_all([END], probs.get)
    assert turn.end_prob == 0.9 and turn.ended


@pytest.mark.parametrize(("prob", "ends"), [(0.5, True), (0.49, False), (None, False)])
def test_a_threshold_ends_the_conversation_where_p_end_reaches_it(prob, ends):
    turn = reader(end_threshold=0.5).read_all([5, 6], lambda step: prob)
    assert turn.ended is ends and turn.end_prob == prob
    assert turn.tokens == ([] if ends else [5, 6])


def test_the_threshold_is_checked_once_before_sampling_where_an_engine_forces_the_end():
    turn = reader(end_threshold=0.5, content_offset=1)
    turn.read(NEWLINE)
    assert turn.starts_here() and turn.measure(0.6) and turn.ended
    other = reader(end_threshold=0.5, content_offset=1)
    other.read(NEWLINE)
    assert not other.measure(0.1) and not other.starts_here()  # measured: not asked again
    other.read(SPACE)
    assert not other.starts_here()


def test_what_may_not_be_sampled():
    assert reader(suppress_end=True).forbids_end() and not reader().forbids_end()
    turn = reader()
    for token in (NEWLINE, DOT):  # whitespace and punctuation hold no word: banned first words still refused
        turn.read(token)
        assert turn.forbids_banned()
    turn.read(5)
    assert not turn.forbids_banned()
    assert TurnReader(TurnRules(end=None), table(WHITESPACE)).forbids_end() is False


def test_a_finished_turn_takes_no_more_tokens():
    turn = reader().read_all([5, EOT])
    with pytest.raises(ValueError):
        turn.read(6)


def test_text_pieces_read_by_the_same_rules():
    rules = TurnRules(end="<end>", stops=frozenset({"<eot>"}))
    spaced = lambda piece: not piece.strip()
    assert TurnReader(rules, spaced).read_all(["  ", "<end>"]).ended
    closed = TurnReader(rules, spaced).read_all(["Thanks", "<end>"])
    assert closed.closed_by_end and not closed.ended and closed.tokens == ["Thanks"]


def test_ids_past_the_tokenizers_table_are_neither_whitespace_nor_words():
    is_space, is_wordless = table(WHITESPACE), table(WORDLESS, beyond=True)
    assert not is_space(50) and is_wordless(50)
