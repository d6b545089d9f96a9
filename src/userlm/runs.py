"""Run integrity: one writer per output file, and records that say what determined them.

* :class:`OutputLock` -- an exclusive lock beside the output (``.NAME.lock``); a second run on the
  same file stops with one sentence naming the holder.
* :func:`determinants` -- what decides a conversation (intent text, seed, turn limit, sampling,
  guardrails, each model's canonical identity), stored in every record with its
  :func:`fingerprint`; resume compares them and names the first setting that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import UserError

#: the determinants that a resumed run must share with what the file already holds
KEYS = ("intent", "run_seed", "max_turns", "sampling", "guardrails", "faults", "user", "assistant")
_FLAGS = {"intent": "the intents file", "run_seed": "--seed", "max_turns": "--max-turns", "sampling": "the sampling options",
          "guardrails": "the guardrail options", "faults": "--reject-faults and --fault-judge", "user": "--user", "assistant": "--assistant"}


class OutputLock:
    """Holds ``.NAME.lock`` beside ``path`` exclusively while a run writes ``path``.

    The lock file lives only as long as the run: releasing it removes it (and the folders it
    made, when the run wrote nothing into them). A run that waited on a lock file that was then
    removed finds out and locks the new one, so two runs never both hold the output."""

    def __init__(self, path: str | Path):
        import fcntl

        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing  #: folders this lock made, deepest first
        while True:
            self._file = open(self.lock_path, "a+", encoding="utf-8")
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._file.seek(0)
                holder = self._file.read().strip() or "another process"
                self._file.close()
                raise UserError(f"{self.path} is being written by another run ({holder}); wait for it to finish, "
                                "or choose another --out.") from None
            try:
                if os.stat(self.lock_path).st_ino == os.fstat(self._file.fileno()).st_ino:
                    break  # the lock file that is there now: ours
            except FileNotFoundError:
                pass
            self._file.close()  # the run before removed the file this one locked: lock the new one
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._file.flush()

    def release(self) -> None:
        if self._file.closed:
            return
        try:
            self.lock_path.unlink()  # while still holding it (see the class's doc)
        except FileNotFoundError:
            pass
        self._file.close()  # closing releases the lock
        if not self.path.exists():
            for folder in self._made:
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def model_identity(name: str) -> str:
    """A model's canonical identity: local paths resolved (``hf:./m`` and ``hf:/abs/m`` are one
    model), hub ids and remote names as given."""
    kind, sep, rest = name.partition(":")
    if not sep:
        return name
    if kind == "prompted":
        return f"prompted:{model_identity(rest)}"
    if kind in ("hf", "vllm", "scripted") and rest and Path(rest).expanduser().exists():
        return f"{kind}:{Path(rest).expanduser().resolve()}"
    if kind == "python":
        module, _, fn = rest.rpartition(":")
        if module.endswith(".py") and Path(module).exists():
            return f"python:{Path(module).resolve()}:{fn}"
    return name


def determinants(intent: str | None, settings: dict[str, Any], user: str, assistant: str) -> dict[str, Any]:
    """What determines a conversation, from a record's fields (``settings`` as recorded), in the
    form it takes in a record (tuples as lists)."""
    return json.loads(json.dumps({
        "intent": intent,
        "run_seed": settings.get("run_seed"),
        "max_turns": settings.get("max_turns"),
        "sampling": {k: v for k, v in sorted(settings.items()) if k.endswith("_sampling")},
        "guardrails": settings.get("guardrails"),
        # only when a run rejects faults or asks a judge: what every run does (the rules) leaves no trace, so
        # records made before faults were caught keep their fingerprints
        **({"faults": settings["faults"]} if settings.get("faults") else {}),
        "user": model_identity(user),
        "assistant": model_identity(assistant),
    }, default=str))


def fingerprint(values: Any) -> str:
    """A short digest of any JSON-able value (a record's determinants, a list of ids)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _comparable(key: str, old: Any, new: Any) -> tuple[Any, Any]:
    """Sampling is compared side by side for the sides both record: a side records its sampling
    when its model samples (the model's identity, compared on its own, says whether it changed),
    and files written before the models stated their sampling lack some sides."""
    if key != "sampling" or not isinstance(old, dict) or not isinstance(new, dict):
        return old, new
    both = old.keys() & new.keys()
    return {k: old[k] for k in both}, {k: new[k] for k in both}


def mismatch(out: Path, conversation_id: str, old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """One sentence naming the first determinant that differs, or None when none does."""
    for key in KEYS:
        was, now = _comparable(key, old.get(key), new.get(key))
        if was != now:
            return (f"{out} holds conversation {conversation_id} made with {key} = {shown(old.get(key))}, but this run has "
                    f"{shown(new.get(key))} ({_FLAGS[key]}); resume with the same settings, or write to another --out.")
    return None


def shown(value: Any) -> str:
    """A setting's value as a sentence quotes it: short."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."
