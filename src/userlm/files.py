"""Files: the one way every output is written, and the one way JSON lines are read.

Writing: the content goes to a temporary file beside the target, is flushed to disk, and then
replaces the target in one step; if writing fails (or is interrupted), the target keeps what it
had and the temporary file is removed. Reading: each line of a JSONL file is parsed with its line
number, and a line that is not JSON is one error naming the file and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_lines(path: str | Path, lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of ``path`` (its ``lines``, as read) parsed, with its line number."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}); write one JSON object per line.") from None
