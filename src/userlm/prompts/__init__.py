"""Prompts shipped as package data."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files


@cache
def load_prompt(name: str) -> str:
    """Text of the prompt file ``name`` (e.g. ``"prompted_user.txt"``)."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def fill_prompt(name: str, **values: str) -> str:
    """The prompt file ``name`` with each ``{key}`` replaced by ``values[key]``, in one pass (a value
    that itself spells ``{key}`` stays as it is); braces of other words are left alone."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], m[0]), load_prompt(name))
