"""Read chat logs into conversation records.

Formats (detected from the fields of each row, or forced):

* ``wildchat``  -- ``conversation`` = [{role, content}] plus ``language``, ``toxic``,
  ``redacted``, ``hashed_ip``, ``country``, ``conversation_hash``;
* ``sharegpt``  -- ``conversations`` = [{from: human|gpt, value}];
* ``openai``    -- ``messages`` = [{role, content}];
* ``oasst``     -- Open-Assistant message trees: every root-to-leaf path is a thread; synthetic
  and deleted messages and messages in other languages are dropped with their replies;
* ``userlm``    -- this project's own conversation records;
* ``simulator-arena`` -- SimulatorArena's annotation files (microsoft/SimulatorArena), real people
  working with an assistant until satisfied: ``user_queries`` and ``ai_responses``, in both task
  types. Document creation records carry the person's ``intent``; the intent given to a simulator
  is that text followed by the details the person had in mind (``bullet_points`` with their own
  ``bullet_points_responses``), which are also kept as ``required_details`` (the premature-end
  fault checks them). Math tutoring records have no intent field: it is written from the record,
  "You are a student ({math_expertise} background) working on a {level} {type} problem from the
  MATH dataset ({question_location}) ...", the problem's text when the record holds it
  (``problem``), and why the person asked the tutor (``why_ask_tutor``); the conversation is cut
  to the first problem's turns (``problem_1_turns``). ``why_stop`` and the ratings go to metadata.

Sources are local ``.json``/``.jsonl``/``.parquet`` files, or hub dataset names read with
``datasets.load_dataset`` where a network is available.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..conversation import Conversation, Message
from ..errors import UserError

FORMATS = ("auto", "wildchat", "sharegpt", "openai", "oasst", "prism", "userlm", "simulator-arena")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                   "bing": "assistant", "assistant": "assistant", "model": "assistant"}


@dataclass
class IngestStats:
    rows: int = 0
    threads: int = 0
    dropped_messages: int = 0  #: oasst: synthetic, deleted or other-language messages (with their replies)


def read_rows(source: str, *, split: str = "train") -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a local file or hub dataset, each with where it came from ("file:line")."""
    path = Path(source)
    if path.suffix in {".jsonl", ".json"} and path.is_file():
        yield from _json_rows(path)
        return
    if path.suffix == ".parquet" and path.is_file():
        from datasets import load_dataset

        for n, row in enumerate(load_dataset("parquet", data_files=str(path), split="train"), 1):
            yield f"{path}:row {n}", row
        return
    if path.exists() or path.suffix in {".jsonl", ".json", ".parquet"}:
        raise UserError(f"{source}: not a readable .json, .jsonl or .parquet file.")
    if "/" not in source:
        raise UserError(f"{source}: no such file, and not a hub dataset name (owner/name).")
    from datasets import load_dataset

    name, _, config = source.partition(":")  # owner/name:config
    try:
        dataset = load_dataset(name, config or None, split=split, streaming=True)
    except Exception as exc:  # offline, unknown name, gated
        raise UserError(f"{source}: cannot load this hub dataset ({str(exc).splitlines()[0]}); download it or give a local file.") from None
    for n, row in enumerate(dataset, 1):
        yield f"{source}[{split}]:row {n}", row


def _json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; give a JSON or JSONL file of conversations.") from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
        for n, row in enumerate(rows, 1):
            yield f"{path}:item {n}", row
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg}); write one JSON object per line.") from None


def detect_format(row: dict[str, Any]) -> str:
    if "schema_version" in row and "messages" in row:
        return "userlm"
    if "conversation_history" in row:
        return "prism"
    if "conversation" in row:
        return "wildchat"
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        return "openai"
    if "prompt" in row and isinstance(row["prompt"], dict) and "replies" in row["prompt"]:
        return "oasst"
    if "user_queries" in row and "ai_responses" in row:
        return "simulator-arena"
    raise ValueError("no 'conversation', 'conversations', 'messages', SimulatorArena 'user_queries'/'ai_responses' "
                     "or Open-Assistant 'prompt' tree field")


def conversations_from(
    source: str, *, fmt: str = "auto", split: str = "train", oasst_languages: tuple[str, ...] = ("en",),
    stats: IngestStats | None = None,
) -> Iterator[Conversation]:
    """Every conversation in ``source``; a row that does not fit its format is an error naming it."""
    stats = stats if stats is not None else IngestStats()
    for where, row in read_rows(source, split=split):
        stats.rows += 1
        try:
            kind = detect_format(row) if fmt == "auto" else fmt
            if kind == "oasst":
                threads = list(_oasst_threads(row, oasst_languages, stats))
            else:
                threads = [_CONVERTERS[kind](row, where)]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            advice = ("check --format" if fmt != "auto" else
                      "give chat logs in a format userlm reads: WildChat, ShareGPT, OpenAI messages, Open-Assistant trees, "
                      "PRISM, SimulatorArena annotation files (user_queries, ai_responses) or userlm records")
            raise UserError(f"{where}: not a {fmt if fmt != 'auto' else 'known chat-log'} row ({exc}); {advice}.") from None
        for conv in threads:
            if conv is not None:
                stats.threads += 1
                yield conv


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


def _normalise(turns: list[tuple[str, str]]) -> list[Message]:
    """Merge consecutive turns of one role, drop leading assistant turns and trailing user turns
    (a conversation ends with the reply the user then ended on)."""
    merged: list[list[str]] = []
    for role, text in turns:
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n\n" + text
        else:
            merged.append([role, text])
    while merged and merged[0][0] != "user":
        merged.pop(0)
    while merged and merged[-1][0] != "assistant":
        merged.pop()
    return [Message.model_validate({"role": r, "content": t}) for r, t in merged]


def _record(cid: str, turns: list[tuple[str, str]], metadata: dict[str, Any], intent: str | None = None) -> Conversation:
    return Conversation(id=cid, intent_id=cid, intent=intent, messages=_normalise(turns), metadata=metadata)


def _wildchat(row: dict[str, Any], where: str) -> Conversation:
    turns = [(t["role"], _text(t["content"])) for t in row["conversation"] if t["role"] in ("user", "assistant")]
    meta: dict[str, Any] = {k: row[k] for k in ("language", "toxic", "redacted", "country", "model") if k in row}
    if row.get("hashed_ip") is not None:
        meta["group"] = f"{row['hashed_ip']}|{row.get('country')}"
    meta["source"] = "wildchat"
    return _record(str(row.get("conversation_hash") or row.get("conversation_id") or where), turns, meta, row.get("intent"))


def _sharegpt(row: dict[str, Any], where: str) -> Conversation:
    turns = [(_SHAREGPT_ROLES[t["from"].lower()], _text(t["value"])) for t in row["conversations"] if t["from"].lower() != "system"]
    meta: dict[str, Any] = {k: row[k] for k in ("language", "lang", "user", "user_id") if k in row}
    meta["source"] = "sharegpt"
    return _record(str(row.get("id") or where), turns, meta, row.get("intent"))


def _openai(row: dict[str, Any], where: str) -> Conversation:
    turns = [(m["role"], _text(m["content"])) for m in row["messages"] if m["role"] in ("user", "assistant")]
    meta = {k: v for k, v in row.items() if k not in ("messages", "id", "intent")}
    meta["source"] = "openai"
    return _record(str(row.get("id") or where), turns, meta, row.get("intent"))


def _prism(row: dict[str, Any], where: str) -> Conversation:
    """PRISM: the user's turns and, of the model replies at each turn, the one the user chose."""
    turns = []
    for t in row["conversation_history"]:
        if t["role"] == "user":
            turns.append(("user", _text(t["content"])))
        elif t.get("if_chosen", True):
            turns.append(("assistant", _text(t["content"])))
    meta = {"group": str(row.get("user_id") or where), "source": "prism"}
    return _record(str(row.get("conversation_id") or where), turns, meta, row.get("intent"))


def _userlm(row: dict[str, Any], where: str) -> Conversation:
    return Conversation.model_validate(row)


def _simulator_arena(row: dict[str, Any], where: str) -> Conversation:
    if not isinstance(row["user_queries"], list) or not isinstance(row["ai_responses"], list):
        raise TypeError("user_queries and ai_responses must be lists")
    queries, replies = [_text(q) for q in row["user_queries"]], [_text(r) for r in row["ai_responses"]]
    meta: dict[str, Any] = {"source": "simulator-arena"}
    meta |= {k: row[k] for k in ("why_stop", "model", "overall_interaction_rating", "overall_document_rating", "overall_rating",
                                 "document_type", "type", "level", "workerId") if row.get(k) is not None}
    if row.get("intent"):
        meta["task"] = "document_creation"
        details = [(str(q), str(a)) for q, a in zip(row.get("bullet_points") or [], row.get("bullet_points_responses") or [])
                   if str(a).strip()]
        intent = str(row["intent"]).strip()
        if details:
            intent += "\n\nDetails you have in mind:\n" + "\n".join(f"- {q} {a.strip()}" for q, a in details)
            meta["required_details"] = [a.strip() for _, a in details]
    else:
        meta["task"] = "math_tutoring"
        cut = row.get("problem_1_turns")
        if isinstance(cut, int) and cut > 0:
            queries, replies = queries[:cut], replies[:cut]
        intent = _math_intent(row)
    turns = [turn for q, r in zip(queries, replies) for turn in (("user", q), ("assistant", r))]
    number = where.rsplit(" ", 1)[-1]
    cid = f"simulator-arena-{meta['task'].replace('_', '-')}-{number}"
    return _record(cid, turns, meta, intent)


def _math_intent(row: dict[str, Any]) -> str:
    """An intent for a SimulatorArena math tutoring record, written from what it holds."""
    background = f" ({row['math_expertise']} math background)" if row.get("math_expertise") else ""
    kind = " ".join(str(row[k]) for k in ("level", "type") if row.get(k)) or "math"
    where = f" ({row['question_location']})" if row.get("question_location") else ""
    intent = f"You are a student{background} working on a {kind} problem from the MATH dataset{where} with an AI tutor."
    if row.get("problem"):
        intent += f"\n\nThe problem: {str(row['problem']).strip()}"
    if row.get("why_ask_tutor"):
        intent += f"\n\nWhy you asked the tutor: {str(row['why_ask_tutor']).strip()}"
    return intent + "\n\nWork through it with the tutor until you can solve it yourself."


def _oasst_threads(tree: dict[str, Any], languages: tuple[str, ...], stats: IngestStats) -> Iterator[Conversation]:
    tree_id = str(tree.get("message_tree_id") or tree["prompt"]["message_id"])
    wanted = {lang.casefold() for lang in languages}

    def keep(message: dict[str, Any]) -> bool:
        ok = not message.get("synthetic") and not message.get("deleted")
        ok = ok and (not wanted or str(message.get("lang", "")).casefold() in wanted)
        if not ok:
            stats.dropped_messages += 1
        return ok

    def walk(message: dict[str, Any], path: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        if not keep(message):
            return
        path = path + [message]
        replies = message.get("replies") or []
        kept_any = False
        for reply in replies:
            for thread in walk(reply, path):
                kept_any = True
                yield thread
        if not kept_any:
            yield path

    root = tree["prompt"]
    for thread in walk(root, []):
        turns = [("user" if m["role"] == "prompter" else "assistant", m["text"]) for m in thread]
        leaf = thread[-1]
        meta = {"language": leaf.get("lang"), "group": str(root.get("user_id") or tree_id), "tree": tree_id, "source": "oasst"}
        conv = _record(str(leaf["message_id"]), turns, meta)
        if conv.messages:
            yield conv


_CONVERTERS = {"simulator-arena": _simulator_arena, "wildchat": _wildchat, "sharegpt": _sharegpt, "openai": _openai, "prism": _prism, "userlm": _userlm}
