"""Intents: the task descriptions the simulated user pursues.

A JSONL file holds one ``{"id": ..., "intent": ...}`` object per line, with any other fields
carried into the conversation record as metadata; a plain text file holds one intent per line
(ids are then the line numbers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import UserError
from .files import json_lines
from .ledger import IdLedger


@dataclass(frozen=True)
class Intent:
    """One task for the simulated user."""

    id: str
    text: str | None  #: None for the no-intent variant
    metadata: dict[str, Any] = field(default_factory=dict)


class Intents(Protocol):
    """What a run reads intents from: a list of them, or an :class:`IntentFile`: sized, and
    iterable again and again (a run iterates them to plan, to resume and to run)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Intent]: ...


def load_intents(path: str | Path) -> list[Intent]:
    """Read intents from a ``.jsonl``/``.json`` file or a plain text file (one intent per line), all at once."""
    return list(IntentFile(path))


class IntentFile:
    """The intents of a file, read as they are needed: checked whole once (ids unique, every line
    well formed) and then read again, a line at a time, each time the intents are iterated, so a
    run of a million intents never holds them all. Sized and re-iterable, as a run needs; the file
    must not change while a run reads it (that is one error, not a silent mix)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such file; pass --intents a JSONL file or a text file with one intent per line.")
        self.jsonl = self.path.suffix in {".jsonl", ".json"} or self._first_character() == "{"
        count = 0
        with IdLedger() as seen:
            for number, intent in self._read():
                if not seen.add(intent.id, str(number)):
                    raise UserError(f"{self.path}:{number}: id {intent.id!r} was already used on line {seen.text(intent.id)}; "
                                    "ids must be unique.")
                count += 1
        if not count:
            raise UserError(f"{self.path}: no intents found; add one intent per line.")
        self._count = count
        self._stamp = self._stat()

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Intent]:
        if self._stat() != self._stamp:
            raise UserError(f"{self.path} changed while this run was reading it; leave it as it is until the run ends, "
                            "then run the same command again (what finished is kept).")
        return (intent for _, intent in self._read())

    def __repr__(self) -> str:
        return f"IntentFile({str(self.path)!r}, {self._count} intents)"

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def _first_character(self) -> str:
        with self._open() as f:
            for line in f:
                if line.strip():
                    return line.lstrip()[0]
        return ""

    def _open(self):
        return open(self.path, encoding="utf-8-sig")  # a byte-order mark is not part of the first intent

    def _read(self) -> Iterator[tuple[int, Intent]]:
        with self._open() as f:
            try:
                if self.jsonl:
                    for number, row in json_lines(self.path, f):
                        yield number, _intent_of(self.path, number, row)
                else:
                    for number, line in enumerate(f, 1):
                        if line.strip():
                            yield number, Intent(id=str(number), text=line.strip())
            except UnicodeDecodeError:
                raise UserError(f"{self.path}: not UTF-8 text; save the intents file as UTF-8.") from None


def _intent_of(path: Path, number: int, row: Any) -> Intent:
    if not isinstance(row, dict):
        raise UserError(f'{path}:{number}: expected a JSON object like {{"id": "a", "intent": "..."}}.')
    if "intent" not in row:
        raise UserError(f'{path}:{number}: missing the "intent" field; add it (null for the no-intent variant).')
    intent = row.pop("intent")
    if intent is not None and (not isinstance(intent, str) or not intent.strip()):
        raise UserError(f'{path}:{number}: "intent" must be a non-empty string (or null).')
    return Intent(id=str(row.pop("id", number)), text=intent, metadata=row)
