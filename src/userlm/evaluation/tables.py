"""What the evaluation tables share: the paper's published figures shown beside measured ones, and
``-`` cells that say why they are empty."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from ..errors import UserError

_PACKAGED = {"intrinsic": "published.json", "extrinsic": "published_extrinsic.json"}


def published_rows(path: str | Path | None = None, *, kind: str = "intrinsic") -> dict:
    """The UserLM paper's published figures (package data unless a file is given): ``intrinsic`` is
    Tables 1-2 (user-simulator metrics), ``extrinsic`` Table 3 (simulated users talking to GPT-4o)."""
    if path is None:
        return json.loads(files("userlm.evaluation").joinpath("data").joinpath(_PACKAGED[kind]).read_text(encoding="utf-8"))
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON file of published figures ({exc}).") from None
    if not isinstance(data, dict) or not all(isinstance(r, dict) and "simulator" in r for r in data.get("rows", [])):
        raise UserError(f"{path}: expected {{\"rows\": [{{\"simulator\": ..., \"metrics\": {{...}}}}]}}, like the built-in published.json.")
    return data


def number(value: float | None, form: str, scale: float = 1.0) -> str | None:
    """``value`` formatted, or None (an empty cell) when there is none."""
    return None if value is None else form.format(scale * value)


class Footnotes:
    """Empty cells that say why: each distinct reason gets a number, listed under the table."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def cell(self, text: str | None, reason: str) -> str:
        if text is not None:
            return text
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"-[^{self.reasons.index(reason) + 1}]"

    def lines(self) -> list[str]:
        return [f"[^{n}]: {reason}" for n, reason in enumerate(self.reasons, 1)]
