"""Prompts shipped as package data."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load_prompt(name: str) -> str:
    """Text of the prompt file ``name`` (e.g. ``"prompted_user.txt"``)."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")
