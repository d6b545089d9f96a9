"""A set of ids that goes to disk as it grows, so that a run of a million conversations holds no
million strings.

Resuming a run needs the ids its output already holds, and reading an intents file needs the
ids seen so far (they must be unique). Both are kept in SQLite's private temporary database
(the standard library's ``sqlite3`` with an empty file name): its pages stay in a small cache
(:data:`CACHE_KIB`) and the rest goes to a file SQLite removes from the folder as it opens it, so
memory stays flat whatever the count, and nothing is left behind however the process ends.
Lookups are exact (no hash that could mistake one id for another).
"""

from __future__ import annotations

import sqlite3

from .errors import UserError

#: SQLite's page cache for a ledger, in KiB: what a ledger holds in memory at most
CACHE_KIB = 2048


class IdLedger:
    """Ids, each with a short text (what the caller needs to know of it later) and a flag."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", isolation_level=None)  # "": a private temporary database on disk
        for pragma in ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{CACHE_KIB}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE ids (id TEXT PRIMARY KEY, text TEXT, flag INTEGER NOT NULL) WITHOUT ROWID")
        self._db.execute("BEGIN")  # one transaction for the ledger's life: nothing in it needs keeping
        self._count = 0

    def add(self, key: str, text: str | None = None, flag: bool = False) -> bool:
        """Add ``key``; False (and nothing changed) when it is already there."""
        added = self._run("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)", (key, text, int(flag))).rowcount == 1
        self._count += added
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

    def __enter__(self) -> IdLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sql: str, values: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, values)
        except sqlite3.OperationalError as exc:  # the disk under the temporary folder is full, or the folder is gone
            raise UserError(f"cannot keep the run's ids in a temporary file ({exc}); free space in the temporary folder "
                            "(SQLITE_TMPDIR or TMPDIR, else /var/tmp or /tmp), or point TMPDIR at a folder with room.") from None
