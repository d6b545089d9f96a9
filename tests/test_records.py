"""Intents files and the conversation record: parsing, errors that name the line, safe appends."""

from __future__ import annotations

import json

import pytest

from userlm.conversation import (
    SCHEMA_VERSION,
    Conversation,
    ConversationWriter,
    Message,
    Rejection,
    iter_conversations,
    read_conversations,
)
from userlm.errors import UserError
from userlm.intents import load_intents


def test_jsonl_intents_keep_their_metadata(intents_file):
    intents = load_intents(intents_file)
    assert [i.id for i in intents] == ["lasagna", "sort", "trip"]
    assert intents[0].metadata == {"topic": "food"}


def test_plain_text_intents_are_numbered_by_line(tmp_path):
    path = tmp_path / "intents.txt"
    path.write_text("Get a recipe.\n\nPlan a trip.\n", encoding="utf-8")
    intents = load_intents(path)
    assert [(i.id, i.text) for i in intents] == [("1", "Get a recipe."), ("3", "Plan a trip.")]


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"id": "a", "intent": "x"}\n{"id": "b", "intent": \n', "intents.jsonl:2: not valid JSON"),
        ('{"id": "a"}\n', 'intents.jsonl:1: missing the "intent" field'),
        ('{"id": "a", "intent": "x"}\n{"id": "a", "intent": "y"}\n', "intents.jsonl:2: id 'a' was already used on line 1"),
        ('["a"]\n', "intents.jsonl:1: expected a JSON object"),
        ('{"id": "a", "intent": ""}\n', 'intents.jsonl:1: "intent" must be a non-empty string'),
    ],
)
def test_bad_intent_lines_are_named(tmp_path, content, message):
    path = tmp_path / "intents.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_intents(path)


def test_missing_intents_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_intents(tmp_path / "nope.jsonl")


def _conversation(i: int) -> Conversation:
    return Conversation(
        id=f"x#{i}", intent_id="x", sample=i, intent="goal",
        messages=[
            Message(role="user", content="hello there you", attempts=2, rejected=[Rejection(draft="I x", reason="first_word")]),
            Message(role="assistant", content="hi"),
        ],
        end_reason="max_turns",
    )


def test_record_round_trips_with_schema_version_and_guardrail_history(tmp_path):
    path = tmp_path / "run.jsonl"
    with ConversationWriter(path) as writer:
        writer.write(_conversation(0))
    raw = json.loads(path.read_text().splitlines()[0])
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["messages"][0]["rejected"] == [{"draft": "I x", "reason": "first_word"}]
    assert "attempts" not in raw["messages"][1]  # assistant turns carry no guardrail fields
    assert raw["error"] is None
    assert read_conversations(path)[0] == _conversation(0)


def test_writer_cuts_a_truncated_last_line_before_appending(tmp_path):
    path = tmp_path / "run.jsonl"
    with ConversationWriter(path) as writer:
        writer.write(_conversation(0))
    with open(path, "a") as f:
        f.write(_conversation(1).to_json()[:40])  # a crash in the middle of a line
    assert [c.id for c in iter_conversations(path, tolerate_truncated_tail=True)] == ["x#0"]
    with ConversationWriter(path) as writer:
        writer.write(_conversation(2))
    assert [c.id for c in read_conversations(path)] == ["x#0", "x#2"]


def test_a_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(_conversation(0).to_json() + "\n{oops\n" + _conversation(1).to_json() + "\n")
    with pytest.raises(UserError, match=r"run.jsonl:2: not a conversation record"):
        read_conversations(path)


def test_events_are_typed_and_unknown_kinds_keep_their_fields(tmp_path):
    from userlm.conversation import AnswerAttempt, Event

    conv = _conversation(0)
    conv.messages[1].events = [AnswerAttempt(answer="42", score=1.0),
                               Event.model_validate({"type": "shard_revealed", "shard": 2, "text": "it is blue"})]
    path = tmp_path / "run.jsonl"
    with ConversationWriter(path) as writer:
        writer.write(conv)
    raw = json.loads(path.read_text())
    assert raw["messages"][1]["events"] == [{"type": "answer_attempt", "answer": "42", "score": 1.0},
                                            {"type": "shard_revealed", "shard": 2, "text": "it is blue"}]
    back = read_conversations(path)[0]
    attempt, other = back.messages[1].events
    assert isinstance(attempt, AnswerAttempt) and attempt.score == 1.0
    assert not isinstance(other, AnswerAttempt) and other.model_dump() == {"type": "shard_revealed", "shard": 2, "text": "it is blue"}
    assert [a.answer for a in back.answer_attempts()] == ["42"]
    bad = raw | {"messages": [raw["messages"][0], raw["messages"][1] | {"events": [{"type": "answer_attempt", "answer": "1"}]}]}
    path.write_text(json.dumps(bad) + "\n")  # an answer attempt without its score: the line is not a record
    with pytest.raises(UserError, match=r"run.jsonl:1: not a conversation record"):
        read_conversations(path)
