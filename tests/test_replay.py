"""Replay against real people (eval-user's replay part), on SimulatorArena's real conversations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from userlm.conversation import Conversation, Message
from userlm.errors import UserError
from userlm.evaluation.simulators.evaluate import default_parts
from userlm.evaluation.simulators.metrics import hdd, mattr, yule_k
from userlm.evaluation.simulators.replay import points_of
from userlm.evaluation.text import words
from userlm.prepare.ingest import conversations_from

ARENA = "simulator-arena/document_creation_annotations_for_benchmarking.json"


def test_document_creation_records_are_read_with_their_intents_and_details(shared_data):
    path = shared_data(ARENA)
    raw = json.loads(path.read_text(encoding="utf-8"))
    convs = list(conversations_from(str(path)))
    assert len(convs) == 51 == len({c.id for c in convs})
    first = convs[0]
    assert first.intent.startswith(raw[0]["intent"]) and "Details you have in mind:" in first.intent
    assert raw[0]["bullet_points_responses"][0] in first.intent
    assert first.metadata["required_details"] == [a.strip() for a in raw[0]["bullet_points_responses"] if a.strip()]
    assert first.metadata["why_stop"] == raw[0]["why_stop"] and first.metadata["task"] == "document_creation"
    assert [m.content for m in first.user_turns()] == raw[0]["user_queries"][: len(first.user_turns())]
    assert first.messages[1].content == raw[0]["ai_responses"][0]


def test_math_tutoring_records_get_an_intent_written_from_what_they_hold(tmp_path, shared_data):
    """SimulatorArena's math tutoring file has no intent field (and its problems are redacted): a
    record shaped like it gets an intent from its fields, cut to the first problem's turns."""
    real = json.loads(shared_data(ARENA).read_text(encoding="utf-8"))[0]
    record = {"math_expertise": "undergrad", "user_queries": ["How would I maximize x^2y - xy^2?", "You do the factoring, please.",
                                                              "Now the second problem."],
              "ai_responses": real["ai_responses"][:3], "why_ask_tutor": "I don't know where to start", "problem_1_turns": 2,
              "level": "Level 4", "type": "Intermediate Algebra", "question_location": "test/intermediate_algebra/1448.json",
              "why_stop": "I felt confident enough to solve the problem.", "model": "claude-3-5-sonnet-20240620"}
    path = tmp_path / "math_tutoring_annotations_redacted_for_benchmarking.json"
    path.write_text(json.dumps([record]))
    conv = next(conversations_from(str(path)))
    assert conv.metadata["task"] == "math_tutoring" and conv.id == "simulator-arena-math-tutoring-1"
    assert "undergrad math background" in conv.intent and "Level 4 Intermediate Algebra problem" in conv.intent
    assert "(test/intermediate_algebra/1448.json)" in conv.intent and "I don't know where to start" in conv.intent
    assert len(conv.user_turns()) == 2  # problem_1_turns


def test_a_file_of_another_shape_gets_one_sentence_saying_what_was_expected(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps([{"queries": ["hi"], "responses": ["hello"]}]))
    with pytest.raises(UserError, match=r"odd.json:item 1: not a known chat-log row .*SimulatorArena annotation files \(user_queries, "
                                        r"ai_responses\)"):
        list(conversations_from(str(path)))


def test_points_are_where_the_person_spoke_and_where_they_stopped():
    conv = Conversation(id="c", intent_id="c", intent="x", messages=[
        Message(role="user", content="a"), Message(role="assistant", content="b"),
        Message(role="user", content="c"), Message(role="assistant", content="d")])
    points = points_of([conv])
    assert [(p.spoken, len(p.history), p.human) for p in points] == [(0, 0, "a"), (1, 2, "c"), (2, 4, None)]


def test_lexical_measures_on_a_hand_checked_text():
    tokens = words("I hope to create a sincere apology to a longtime friend of mine. I was not in the wrong in this. "
                   "This was over a disagreement between her son and my daughter")
    assert len(tokens) == 32
    # the values of the reference implementations (lexicalrichness 0.5.1: mattr(window_size=10), hdd(draws=10), yulek)
    assert mattr(tokens, 10) == pytest.approx(0.8869565217391304)
    assert hdd(tokens, 10) == pytest.approx(0.9298387096774194)
    assert yule_k(tokens) == pytest.approx(156.25)
    assert mattr(["a", "b", "a"], 10) == pytest.approx(2 / 3) and hdd(tokens, 42) is None and yule_k([]) is None


def test_replay_is_in_the_default_parts_when_the_data_carry_intents(shared_data):
    arena = list(conversations_from(str(shared_data(ARENA))))
    oasst = list(conversations_from(str(shared_data("oasst/en_100_tree.jsonl"))))
    assert "replay" in default_parts(arena) and "replay" not in default_parts(oasst)


@pytest.fixture(scope="module")
def long_user_dir(tmp_path_factory, real_prompts):
    """A tiny random user model whose context holds SimulatorArena's conversations (1.6k-22k
    tokens with its small vocabulary): points beyond a model's context are left out and counted."""
    from userlm.training.scratch import ModelSize, build_random_model

    return build_random_model(tmp_path_factory.mktemp("long") / "user", real_prompts, vocab_size=1024, seed=1,
                              size=ModelSize(max_positions=16384))


def test_eval_user_replays_the_real_conversations_with_a_tiny_model(tmp_path, long_user_dir, shared_data):
    out = tmp_path / "eval"
    tiny_user_dir = long_user_dir
    command = [sys.executable, "-m", "userlm", "eval-user", "--user", f"hf:{tiny_user_dir}", "--data", str(shared_data(ARENA)),
               "--parts", "replay", "--limit", "3", "--replay-drafts", "2", "--resamples", "100", "--out", str(out), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "user_eval.json").read_text())
    replay = report["simulators"][0]["replay"]
    assert replay == report["simulators"][0]["parts"]["replay"]
    assert replay["conversations"] == 3 and replay["drafts"] == 2 and replay["points_without_drafts"] == 0
    assert set(replay["stop"]) == {"f1", "precision", "recall", "auroc"}
    assert replay["stop"]["f1"]["value"] is None and "too few conversations" in replay["stop"]["f1"]["note"]  # 3 < 10
    auroc = replay["stop"]["auroc"]
    assert 0 <= auroc["value"] <= 1 and auroc["low"] <= auroc["value"] <= auroc["high"]
    for kind in ("first", "follow_up"):
        fig = replay["turn_words"][kind]
        assert fig["value"] >= 0 and fig["simulator"] and fig["human"] and all(isinstance(n, int) for n in fig["human"])
    assert set(replay["lexical"]) == {"mattr", "hdd", "yule_k"}
    assert replay["lexical"]["mattr"]["value"] is not None and replay["lexical"]["mattr"]["human_mean"] is not None
    assert 0 <= replay["next_turn"]["value"] <= 1
    people, itself = replay["controls"]["human_vs_human"], replay["controls"]["simulator_vs_itself"]
    assert {"stop", "turn_words", "lexical", "next_turn"} <= set(people) and {"turn_words", "lexical", "next_turn"} <= set(itself)
    assert 0 < people["stop"]["auroc"]["value"] <= 1 and people["next_turn"]["value"] > 0
    assert replay["seconds"] > 0
    md = (out / "user_eval.md").read_text()
    assert "## Replay against real people" in md and "*control:* people against people" in md
    assert f"hf:{tiny_user_dir}` against itself" in md
    # the same command resumes: the saved part is kept as it was
    again = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "user_eval.json").read_text())["simulators"][0]["replay"]["seconds"] == replay["seconds"]
    # and the HTML report shows the replay table, beside the real conversations
    from userlm.conversation import write_conversations

    people = tmp_path / "people.jsonl"
    write_conversations(people, list(conversations_from(str(shared_data(ARENA))))[:3])
    page = tmp_path / "report.html"
    shown = subprocess.run([sys.executable, "-m", "userlm", "report", str(people), str(out / "user_eval.json"), "--out", str(page)],
                           capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr
    data = page.read_text()
    assert "Replay against real people" in data and "people against people" in data
