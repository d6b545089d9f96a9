"""Filter conversations and split them by user, counting what each step removes.

Near-duplicates are found with MinHash LSH from ``datasketch``: each conversation's text (all
turns, or only the user's with ``dedup_on="user"``) is cut into word 3-gram shingles, hashed
with 128 permutations, and a conversation whose estimated Jaccard similarity to one already kept
is at least ``dedup_threshold`` (0.8) is removed.

The split is by user, so that nobody's conversations are in two splits: WildChat's hashed IP plus
country, else a ``user``/``user_id`` field, else (Open-Assistant) the message tree, else the
conversation itself. Each user goes to a split by a seeded hash of its key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..conversation import Conversation
from ..files import write_text
from ..guardrails import normalise

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class FilterConfig:
    """Every filtering step; ``None`` switches a step off."""

    languages: tuple[str, ...] | None = ("en", "english")  #: keep these (case-insensitive); rows without a language are kept
    drop_toxic: bool = True
    drop_redacted: bool = True
    max_turn_chars: int | None = 16000  #: a longer turn (either side) drops the conversation
    min_user_turns: int = 1
    max_user_turns: int | None = None
    dedup_threshold: float | None = 0.8
    dedup_on: str = "all"  #: "all" turns or only the "user" turns
    dedup_num_perm: int = 128
    split: tuple[float, float, float] = (0.9, 0.05, 0.05)  #: train, validation, test fractions by user
    seed: int = 0


@dataclass
class StepCount:
    step: str
    removed: int
    remaining: int


@dataclass
class PrepareReport:
    """How many conversations each step removed, and the sizes of the splits."""

    read: int = 0
    steps: list[StepCount] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    dedup_method: str = ""
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [f"{'step':<28}{'removed':>9}{'remaining':>11}", f"{'read':<28}{'':>9}{self.read:>11}"]
        rows += [f"{s.step:<28}{s.removed:>9}{s.remaining:>11}" for s in self.steps]
        rows.append("splits: " + ", ".join(f"{k} {v} conversations / {self.users.get(k, 0)} users" for k, v in self.splits.items()))
        return "\n".join(rows)


def user_key(conv: Conversation) -> str:
    meta = conv.metadata
    for key in ("group", "user", "user_id"):
        if meta.get(key) not in (None, ""):
            return str(meta[key])
    return conv.id


def split_of(key: str, config: FilterConfig) -> str:
    digest = hashlib.blake2b(f"{config.seed}:{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    train, validation, _ = config.split
    return "train" if u < train else "validation" if u < train + validation else "test"


def _step(report: PrepareReport, name: str, convs: list[Conversation], keep: Callable[[Conversation], bool]) -> list[Conversation]:
    kept = [c for c in convs if keep(c)]
    report.steps.append(StepCount(name, len(convs) - len(kept), len(kept)))
    return kept


def filter_and_split(conversations: Iterable[Conversation], config: FilterConfig = FilterConfig()) -> tuple[dict[str, list[Conversation]], PrepareReport]:
    convs = list(conversations)
    report = PrepareReport(read=len(convs), config=asdict(config))
    if config.languages is not None:
        wanted = {x.casefold() for x in config.languages}
        convs = _step(report, "language", convs, lambda c: not c.metadata.get("language") or str(c.metadata["language"]).casefold() in wanted)
    if config.drop_toxic:
        convs = _step(report, "toxic", convs, lambda c: not c.metadata.get("toxic"))
    if config.drop_redacted:
        convs = _step(report, "redacted", convs, lambda c: not c.metadata.get("redacted"))
    convs = _step(report, "empty turn", convs, lambda c: bool(c.messages) and all(m.content.strip() for m in c.messages))
    if config.max_turn_chars is not None:
        most_chars = config.max_turn_chars
        convs = _step(report, "overlong turn", convs, lambda c: all(len(m.content) <= most_chars for m in c.messages))
    convs = _step(report, f"fewer than {config.min_user_turns} user turns", convs, lambda c: len(c.user_turns()) >= config.min_user_turns)
    if config.max_user_turns is not None:
        most_turns = config.max_user_turns
        convs = _step(report, f"more than {most_turns} user turns", convs, lambda c: len(c.user_turns()) <= most_turns)
    if config.dedup_threshold is not None:
        report.dedup_method = (
            f"MinHash LSH (datasketch), {config.dedup_num_perm} permutations, word 3-gram shingles of "
            f"{'all turns' if config.dedup_on == 'all' else 'the user turns'}, Jaccard >= {config.dedup_threshold}"
        )
        keep = _near_duplicates(convs, config)
        report.steps.append(StepCount("near-duplicate", len(convs) - len(keep), len(keep)))
        convs = [convs[i] for i in sorted(keep)]
    splits: dict[str, list[Conversation]] = {s: [] for s in SPLITS}
    users: dict[str, set[str]] = {s: set() for s in SPLITS}
    for conv in convs:
        key = user_key(conv)
        name = split_of(key, config)
        splits[name].append(conv)
        users[name].add(key)
    report.splits = {k: len(v) for k, v in splits.items()}
    report.users = {k: len(v) for k, v in users.items()}
    return splits, report


def _near_duplicates(convs: list[Conversation], config: FilterConfig) -> set[int]:
    """Indices of the conversations to keep: the first of each group of near-duplicates."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=config.dedup_threshold, num_perm=config.dedup_num_perm)
    kept: set[int] = set()
    for index, conv in enumerate(convs):
        turns = conv.messages if config.dedup_on == "all" else conv.user_turns()
        words = normalise(" ".join(m.content for m in turns)).split()
        shingles = {" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))}
        signature = MinHash(num_perm=config.dedup_num_perm, seed=config.seed)
        signature.update_batch([s.encode() for s in shingles])
        if lsh.query(signature):
            continue
        lsh.insert(str(index), signature)
        kept.add(index)
    return kept


def save_prepared(out: Path, splits: dict[str, list[Conversation]], report: PrepareReport, sources: list[str],
                  rows: int, dropped_messages: int) -> None:
    """``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` and ``report.json`` (what was kept and why)."""
    from ..conversation import write_conversations

    for name, convs in splits.items():
        write_conversations(out / f"{name}.jsonl", convs)
    summary = {"sources": sources, "rows": rows, "oasst_dropped_messages": dropped_messages, **report.to_dict()}
    write_text(out / "report.json", json.dumps(summary, indent=2))
