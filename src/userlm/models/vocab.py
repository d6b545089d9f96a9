"""Per-tokenizer tables the guardrails need: which tokens are whitespace, which hold no word,
and which begin with a banned first word. Shared by the ``hf:`` engine and the ``vllm:`` guard."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ..guardrails import first_word


@dataclass(frozen=True)
class VocabTables:
    """Per-tokenizer lookups, computed once."""

    whitespace: torch.Tensor  #: bool[vocab]: the token decodes to whitespace only
    wordless: torch.Tensor  #: bool[vocab]: the token holds no letter or digit (spaces, punctuation)
    texts: tuple[str, ...]  #: each token's text, for the first-word filter


def vocab_tables(tokenizer) -> VocabTables:
    return _vocab_tables(tokenizer)


@lru_cache(maxsize=8)
def _vocab_tables(tokenizer) -> VocabTables:
    size = len(tokenizer)
    texts = tuple(tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False))
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}).keys())
    ws = torch.tensor([(t.strip() == "" and t != "" and i not in special) for i, t in enumerate(texts)])
    wordless = torch.tensor([(i not in special and not any(c.isalnum() for c in t)) for i, t in enumerate(texts)])
    return VocabTables(whitespace=ws, texts=texts, wordless=wordless)


def banned_first_ids(tokenizer, words: tuple[str, ...]) -> torch.Tensor:
    """Token ids whose text, as the first content token, begins with a banned word.

    A token like "I", " I'm" or "Here" is banned; "If" and "Hello" are not. A banned word spelt
    over several tokens ("He" + "re") slips through here and is refused by the draft check.
    """
    return _banned_first_ids(tokenizer, tuple(sorted(w.casefold() for w in words)))


@lru_cache(maxsize=32)
def _banned_first_ids(tokenizer, words: tuple[str, ...]) -> torch.Tensor:
    texts = vocab_tables(tokenizer).texts
    banned = set(words)
    ids = [i for i, text in enumerate(texts) if first_word(text).casefold() in banned]
    return torch.tensor(ids, dtype=torch.long)
