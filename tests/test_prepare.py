"""Data preparation: every chat-log format, filters with counts, near-duplicates, split by user,
and intents written by a chat model."""

from __future__ import annotations

import asyncio
import json

import pytest

import userlm
from userlm.conversation import Conversation, Message, read_conversations
from userlm.errors import UserError
from userlm.prepare.filters import FilterConfig, filter_and_split, user_key
from userlm.prepare.ingest import IngestStats, conversations_from
from userlm.prepare.intent_writer import PREFIX, write_intents


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_wildchat_rows(tmp_path):
    row = {"conversation_hash": "h1", "language": "English", "toxic": False, "redacted": False, "hashed_ip": "ip9",
           "country": "France", "conversation": [
               {"role": "user", "content": "hi, fix my code"}, {"role": "assistant", "content": "sure"},
               {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "welcome"}]}
    [conv] = conversations_from(write_jsonl(tmp_path / "w.jsonl", [row]))
    assert conv.id == "h1" and conv.intent is None
    assert [m.role for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert conv.metadata["group"] == "ip9|France" and conv.metadata["language"] == "English"


def test_sharegpt_and_openai_rows(tmp_path):
    share = {"id": "s1", "conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "a"},
                                           {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"},
                                           {"from": "human", "value": "unanswered"}]}
    [conv] = conversations_from(write_jsonl(tmp_path / "s.jsonl", [share]))
    # consecutive user turns merge; the unanswered last user turn is dropped
    assert [(m.role, m.content) for m in conv.messages] == [("user", "a\n\nb"), ("assistant", "c")]
    openai = {"id": "o1", "intent": "You are a user chatting with an assistant to test.", "messages": [
        {"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "parts"}]},
        {"role": "assistant", "content": "ok"}]}
    [conv] = conversations_from(write_jsonl(tmp_path / "o.jsonl", [openai]))
    assert conv.intent.startswith("You are a user") and conv.messages[0].content == "parts"


def test_parquet_files_are_read_through_datasets(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "p1", "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "logs.parquet")
    [conv] = conversations_from(str(tmp_path / "logs.parquet"))
    assert conv.id == "p1" and conv.messages[1].content == "hi"


def test_hub_names_use_datasets_and_fail_clearly_offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot load this hub dataset"):
        list(conversations_from("nobody-here/no-such-chat-logs"))


def test_bad_rows_are_named(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, {"text": "?"}])
    with pytest.raises(UserError, match=r"bad.jsonl:2: not a known chat-log row"):
        list(conversations_from(path))


def test_open_assistant_trees_become_threads_without_synthetic_deleted_or_foreign_messages(tmp_path):
    def msg(mid, role, text, replies=(), **kw):
        return {"message_id": mid, "role": role, "text": text, "lang": kw.get("lang", "en"),
                "synthetic": kw.get("synthetic", False), "deleted": kw.get("deleted", False), "replies": list(replies)}

    tree = {"message_tree_id": "t", "prompt": msg("u1", "prompter", "question", [
        msg("a1", "assistant", "answer one", [msg("u2", "prompter", "follow up", [msg("a2", "assistant", "more")])]),
        msg("a2x", "assistant", "machine answer", synthetic=True),
        msg("a3", "assistant", "deleted answer", deleted=True),
        msg("a4", "assistant", "respuesta", lang="es"),
        msg("a5", "assistant", "answer five"),
    ])}
    stats = IngestStats()
    threads = list(conversations_from(write_jsonl(tmp_path / "t.jsonl", [tree]), stats=stats))
    assert sorted(t.id for t in threads) == ["a2", "a5"]
    assert [m.content for m in next(t for t in threads if t.id == "a2").messages] == ["question", "answer one", "follow up", "more"]
    assert stats.dropped_messages == 3
    assert {t.metadata["group"] for t in threads} == {"t"}


def test_real_open_assistant_threads(shared_data):
    shared = shared_data
    stats = IngestStats()
    threads = list(conversations_from(str(shared("oasst/en_100_tree.jsonl")), stats=stats))
    assert stats.rows == 100 and len(threads) > 500
    assert all(t.messages[0].role == "user" and t.messages[-1].role == "assistant" for t in threads)
    raw = [json.loads(line) for line in shared("oasst/en_100_tree.jsonl").read_text().splitlines()]

    def walk(m):
        yield m
        for r in m.get("replies", []):
            yield from walk(r)

    synthetic = {m["message_id"] for t in raw for m in walk(t["prompt"]) if m.get("synthetic") or m.get("deleted")}
    assert synthetic and not {t.id for t in threads} & synthetic


def conv(cid, user_text, group=None, **meta):
    return Conversation(id=cid, intent_id=cid, intent=None, metadata={**meta, **({"group": group} if group else {})},
                        messages=[Message(role="user", content=user_text), Message(role="assistant", content="reply " + cid)])


def test_every_filter_step_is_counted():
    convs = [conv("ok", "how do I bake bread at home"), conv("fr", "bonjour", language="French"),
             conv("tox", "bad words here", toxic=True), conv("red", "my name is NAME", redacted=True),
             conv("empty", "   "), conv("long", "x" * 50)]
    _, report = filter_and_split(convs, FilterConfig(max_turn_chars=40, dedup_threshold=None))
    removed = {s.step: s.removed for s in report.steps}
    assert removed == {"language": 1, "toxic": 1, "redacted": 1, "empty turn": 1, "overlong turn": 1, "fewer than 1 user turns": 0}
    assert report.steps[-1].remaining == 1


def test_near_duplicates_are_removed_but_different_conversations_stay():
    base = "please explain how photosynthesis works in plants and why leaves are green in summer"
    convs = [conv("a", base), conv("b", base + " thanks"), conv("c", "what is the capital city of australia and why not sydney")]
    convs[1].messages[1].content = "reply a"  # same reply too: a near-copy of a
    splits, report = filter_and_split(convs, FilterConfig(split=(1.0, 0.0, 0.0)))
    assert {s.step: s.removed for s in report.steps}["near-duplicate"] == 1
    assert sorted(c.id for c in splits["train"]) == ["a", "c"]
    assert "MinHash" in report.dedup_method and "0.8" in report.dedup_method


def test_split_keeps_each_user_in_one_split():
    convs = [conv(f"c{i}", f"question number {i} about topic {i % 7} with words {i * 3}", group=f"user{i % 40}") for i in range(400)]
    splits, report = filter_and_split(convs, FilterConfig(dedup_threshold=None, split=(0.6, 0.2, 0.2)))
    users = {name: {user_key(c) for c in rows} for name, rows in splits.items()}
    assert not users["train"] & users["validation"] and not users["train"] & users["test"] and not users["validation"] & users["test"]
    assert all(users[s] for s in users) and sum(report.splits.values()) == 400
    # without a user field, conversations split on their own
    assert user_key(conv("solo", "x")) == "solo"


def test_oasst_threads_of_one_tree_never_straddle_splits(shared_data):
    threads = list(conversations_from(str(shared_data("oasst/en_100_tree.jsonl"))))
    splits, _ = filter_and_split(threads, FilterConfig(split=(0.5, 0.25, 0.25)))
    trees = {name: {c.metadata["tree"] for c in rows} for name, rows in splits.items()}
    assert not trees["train"] & trees["validation"] and not trees["train"] & trees["test"] and not trees["validation"] & trees["test"]


def test_intents_are_written_cached_resumed_and_failures_reported(tmp_path):
    convs = [conv(f"c{i}", f"how do I do thing {i}") for i in range(5)]
    convs[4].intent = "You are a user chatting with an assistant to bring your own intent."
    calls = []

    def model(messages):
        calls.append(messages[0]["content"])
        if "thing 3" in messages[0]["content"]:
            return "Sorry, I cannot help with that."
        return "Intent: You are a user chatting with an assistant to learn how to do a thing."

    chat = userlm.load_assistant(model)
    out = tmp_path / "with_intents.jsonl"
    run = asyncio.run(write_intents(convs, chat, out, progress=False, cache=tmp_path / 'cache.jsonl'))
    assert (run.written, len(run.failed)) == (4, 1) and run.failed[0]["id"] == "c3"
    assert json.loads((tmp_path / "with_intents.jsonl.failed.jsonl").read_text())["id"] == "c3"
    records = {c.id: c for c in read_conversations(out)}
    assert records["c0"].intent == f"{PREFIX} learn how to do a thing."
    assert records["c4"].intent == convs[4].intent  # brought its own
    assert "Example 1" in calls[0] and "USER: how do I do thing" in calls[0]
    assert len(calls) == 4
    # resumable: only the failed one is asked again
    run = asyncio.run(write_intents(convs, chat, out, progress=False, cache=tmp_path / 'cache.jsonl'))
    assert (run.skipped, run.written, len(run.failed), len(calls)) == (4, 0, 1, 5)
    # cached: a new output reuses every answer already given
    run = asyncio.run(write_intents(convs[:3], chat, tmp_path / "again.jsonl", progress=False, cache=tmp_path / "cache.jsonl"))
    assert (run.written, run.cached, len(calls)) == (3, 3, 5)
