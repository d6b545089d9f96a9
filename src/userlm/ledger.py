"""A set of ids that moves to disk as it grows, so that a run of a million conversations holds no
million strings.

Resuming a run needs the ids its output already holds, and reading an intents file needs the
ids seen so far (they must be unique). Both are kept in SQLite (the standard library's): in
memory while they are few, then, past :data:`SPILL_AT`, in a temporary file of the ledger's own
with a small page cache, so memory stays flat whatever the count. Lookups are exact (no hash
that could mistake one id for another); the file goes when the ledger is closed or collected.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from .errors import UserError

#: ids kept in memory before the ledger moves to a temporary file
SPILL_AT = 50_000
#: SQLite's page cache for a ledger on disk, in KiB
CACHE_KIB = 2048


class IdLedger:
    """Ids, each with a short text (what the caller needs to know of it later) and a flag."""

    def __init__(self, spill_at: int | None = None) -> None:
        self.spill_at = spill_at if spill_at is not None else SPILL_AT
        self._db = sqlite3.connect(":memory:", isolation_level=None)
        self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, text TEXT, flag INTEGER NOT NULL) WITHOUT ROWID")
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._count = 0

    @property
    def folder(self) -> Path | None:
        """The temporary folder of its file, once the ledger is on disk."""
        return Path(self._folder.name) if self._folder is not None else None

    def add(self, key: str, text: str | None = None, flag: bool = False) -> bool:
        """Add ``key``; False (and nothing changed) when it is already there."""
        added = self._run("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)", (key, text, int(flag))).rowcount == 1
        self._count += added
        if added and self._count >= self.spill_at and self._folder is None:
            self._spill()
        return added

    def text(self, key: str) -> str | None:
        """The text ``key`` was added with (None when it is not there or had none)."""
        row = self._run("SELECT text FROM ids WHERE id = ?", (key,)).fetchone()
        return row[0] if row else None

    def __contains__(self, key: object) -> bool:
        return self._count > 0 and self._run("SELECT 1 FROM ids WHERE id = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return self._count

    def flagged(self) -> int:
        return self._run("SELECT COUNT(*) FROM ids WHERE flag = 1").fetchone()[0]

    def is_flagged(self, key: str) -> bool:
        return self._run("SELECT 1 FROM ids WHERE id = ? AND flag = 1", (key,)).fetchone() is not None

    def drop_flagged(self) -> int:
        """Remove the flagged ids; how many went."""
        gone = self._run("DELETE FROM ids WHERE flag = 1").rowcount
        self._count -= gone
        return gone

    def close(self) -> None:
        self._db.close()
        if self._folder is not None:
            self._folder.cleanup()

    def __enter__(self) -> IdLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spill(self) -> None:
        """Move the ids to a file: one transaction for the ledger's life (nothing needs keeping)."""
        try:
            self._folder = tempfile.TemporaryDirectory(prefix="userlm-ids-")
        except OSError as exc:
            raise self._no_room(exc) from None
        on_disk = sqlite3.connect(Path(self._folder.name) / "ids.sqlite", isolation_level=None)
        try:
            for pragma in ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{CACHE_KIB}", "temp_store = FILE"):
                on_disk.execute(f"PRAGMA {pragma}")
            self._db.backup(on_disk)
            on_disk.execute("BEGIN")
        except sqlite3.Error as exc:
            on_disk.close()
            raise self._no_room(exc) from None
        self._db.close()
        self._db = on_disk

    def _run(self, sql: str, values: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, values)
        except sqlite3.OperationalError as exc:  # the disk under the temporary folder is full, or gone
            raise self._no_room(exc) from None

    def _no_room(self, exc: Exception) -> UserError:
        where = self._folder.name if self._folder is not None else tempfile.gettempdir()
        return UserError(f"cannot keep the run's ids in {where} ({exc}); free space there, or set TMPDIR to a folder with room.")
