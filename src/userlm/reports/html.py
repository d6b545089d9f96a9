"""Write the report: one HTML file with its data, styles, scripts and Plotly embedded, so it
opens offline from disk with no server and nothing fetched."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..files import write_text


def _asset(name: str) -> str:
    return files(__package__).joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    # inside <script> the only sequence to defuse is "</" (it could close the tag)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def render(data: dict[str, Any], title: str = "userlm report") -> str:
    from plotly.offline import get_plotlyjs

    page = _asset("report.html")
    return (
        page.replace("{{title}}", title)
        .replace("{{style}}", _asset("report.css"))
        .replace("{{plotly}}", get_plotlyjs().replace("</script", "<\\/script"))
        .replace("{{data}}", _script_json(data))
        .replace("{{script}}", _asset("report.js"))
    )


def write(data: dict[str, Any], out: str | Path, title: str = "userlm report") -> Path:
    """Write atomically: a half-written report never replaces a good one."""
    return write_text(out, render(data, title))
