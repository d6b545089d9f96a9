"""Shared fixtures: real data from ../shared/data and tiny models built in the test session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("USERLM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared(relative: str, *, built_in: bool = True) -> Path:
    """A file of the shared real data; where a clone has none beside it, the copy that ships with
    the package (``userlm.data``) when there is one (``built_in=False``: the shared file only)."""
    from userlm.data import BUILTIN, builtin_path

    path = SHARED / relative
    if path.exists():
        return path
    copies = {file: name for name, file in BUILTIN.items()}
    if built_in and relative in copies:
        return builtin_path(copies[relative])
    pytest.skip(f"real data {path} is not here; set USERLM_SHARED_DATA to the shared data folder")


@pytest.fixture(scope="session")
def shared_data():
    """The path of a file in the shared real data (see :func:`shared`)."""
    return shared


@pytest.fixture(scope="session")
def real_prompts() -> list[str]:
    """250 real first-turn user prompts (Open-Assistant)."""
    with open(shared("oasst/prompt_lottery_en_250_text.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def tiny_user_dir(tmp_path_factory, real_prompts) -> Path:
    """A tiny random Llama with a BPE tokenizer carrying the UserLM special tokens and template."""
    from userlm.training.scratch import build_random_model

    return build_random_model(tmp_path_factory.mktemp("tiny") / "user", real_prompts, vocab_size=1024, seed=1)


@pytest.fixture(scope="session")
def tiny_assistant_dir(tmp_path_factory, real_prompts) -> Path:
    """A tiny random Llama with an instruct-style chat template, to play the assistant."""
    from userlm.training.scratch import build_random_model

    return build_random_model(
        tmp_path_factory.mktemp("tiny") / "assistant", real_prompts, role="assistant", vocab_size=1024, seed=2
    )


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_user_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_user_dir)


@pytest.fixture
def intents_file(tmp_path) -> Path:
    path = tmp_path / "intents.jsonl"
    rows = [
        {"id": "lasagna", "intent": "You are a user chatting with an assistant to get a vegan lasagna recipe.", "topic": "food"},
        {"id": "sort", "intent": "You are a user chatting with an assistant to sort a list of dicts in Python."},
        {"id": "trip", "intent": "You are a user chatting with an assistant to plan a cheap trip to Lisbon."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
