"""Write a high-level intent for each conversation with any chat model.

Concurrent, cached (by model and prompt, in a JSONL file shared by all runs: ``$USERLM_CACHE_DIR``
or ``~/.cache/userlm``, ``intents.jsonl``), and resumable
(conversations already in the output are skipped). Conversations whose intent could not be
produced are listed in ``<out>.failed.jsonl`` and counted, never dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..conversation import Conversation, ConversationWriter, iter_conversations
from ..errors import ConfigurationError
from ..files import write_text
from ..models.base import ChatModel
from ..models.cached import CachedChat
from ..prompts import fill_prompt

PREFIX = "You are a user chatting with an assistant to"
_MAX_TURN_CHARS = 600  #: turns are shortened in the prompt: the goal shows without the details


def default_cache() -> Path:
    root = os.environ.get("USERLM_CACHE_DIR") or Path.home() / ".cache" / "userlm"
    return Path(root) / "intents.jsonl"


def intent_prompt(conv: Conversation) -> str:
    lines = []
    for m in conv.messages:
        text = " ".join(m.content.split())
        if len(text) > _MAX_TURN_CHARS:
            text = text[:_MAX_TURN_CHARS] + " ..."
        lines.append(f"{m.role.upper()}: {text}")
    return fill_prompt("intent.txt", conversation="\n".join(lines))


def parse_intent(reply: str) -> str:
    """The intent in a model's reply; ValueError when it is not one."""
    text = reply.strip().removeprefix("Intent:").strip().strip('"').strip()
    if not text.startswith("You "):
        raise ValueError(f"the reply is not a second-person intent: {text[:80]!r}")
    return " ".join(text.split())


@dataclass
class IntentRun:
    written: int = 0
    skipped: int = 0
    cached: int = 0
    failed: list[dict] = field(default_factory=list)


async def write_intents(
    conversations: Sequence[Conversation], model: ChatModel, out: str | Path, *, concurrency: int = 16,
    overwrite_existing: bool = False, progress: bool = True, cache: str | Path | None = None,
) -> IntentRun:
    """Fill in ``intent`` for every conversation and append the records to ``out``.

    Conversations that bring their own intent keep it unless ``overwrite_existing``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    done = {c.id for c in iter_conversations(out, tolerate_truncated_tail=True)} if out.exists() else set()
    run = IntentRun(skipped=sum(1 for c in conversations if c.id in done))
    todo = [c for c in conversations if c.id not in done]
    asker = CachedChat(model, Path(cache) if cache is not None else default_cache(), concurrency=concurrency)
    writer = ConversationWriter(out)
    bar = tqdm(total=len(conversations), initial=run.skipped, unit="conv", desc="intents", disable=not progress)

    async def one(conv: Conversation) -> None:
        if conv.intent and not overwrite_existing:
            intent = conv.intent
        else:
            try:
                intent = parse_intent(await asker.ask(intent_prompt(conv), check=parse_intent))
            except ConfigurationError:
                raise
            except Exception as exc:  # reported in <out>.failed.jsonl, redone on the next run
                run.failed.append({"id": conv.id, "error": f"{type(exc).__name__}: {exc}"})
                bar.update(1)
                return
        writer.write(conv.model_copy(update={"intent": intent}))
        run.written += 1
        bar.update(1)

    try:
        await asyncio.gather(*(one(c) for c in todo))
    finally:
        bar.close()
        writer.close()
        run.cached = asker.hits
        failed_path = out.with_name(out.name + ".failed.jsonl")
        write_text(failed_path, "".join(json.dumps(f) + "\n" for f in run.failed))
    return run
