"""Intents: the task descriptions the simulated user pursues.

A JSONL file holds one ``{"id": ..., "intent": ...}`` object per line, with any other fields
carried into the conversation record as metadata; a plain text file holds one intent per line
(ids are then the line numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .files import json_lines


@dataclass(frozen=True)
class Intent:
    """One task for the simulated user."""

    id: str
    text: str | None  #: None for the no-intent variant
    metadata: dict[str, Any] = field(default_factory=dict)


def load_intents(path: str | Path) -> list[Intent]:
    """Read intents from a ``.jsonl``/``.json`` file or a plain text file (one intent per line)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass --intents a JSONL file or a text file with one intent per line.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first intent
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the intents file as UTF-8.") from None
    if path.suffix in {".jsonl", ".json"} or text.lstrip().startswith("{"):
        intents = _parse_jsonl(path, text)
    else:
        intents = [Intent(id=str(n), text=line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not intents:
        raise UserError(f"{path}: no intents found; add one intent per line.")
    return intents


def _parse_jsonl(path: Path, text: str) -> list[Intent]:
    intents: list[Intent] = []
    seen: dict[str, int] = {}
    for number, row in json_lines(path, text.splitlines()):
        if not isinstance(row, dict):
            raise UserError(f'{path}:{number}: expected a JSON object like {{"id": "a", "intent": "..."}}.')
        if "intent" not in row:
            raise UserError(f'{path}:{number}: missing the "intent" field; add it (null for the no-intent variant).')
        intent = row.pop("intent")
        if intent is not None and (not isinstance(intent, str) or not intent.strip()):
            raise UserError(f'{path}:{number}: "intent" must be a non-empty string (or null).')
        ident = str(row.pop("id", number))
        if ident in seen:
            raise UserError(f"{path}:{number}: id {ident!r} was already used on line {seen[ident]}; ids must be unique.")
        seen[ident] = number
        intents.append(Intent(id=ident, text=intent, metadata=row))
    return intents
