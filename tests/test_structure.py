"""The package's layering: each part imports only the parts below it, so there is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import userlm

#: bottom to top: errors, files and the data that ships with the package, records and rendering, guardrails, models, simulated user, runner, data
#: preparation, evaluation, training, reports, integrations, command line
LAYERS = ["errors", "files", "data", "conversation", "intents", "runs", "prompts", "render", "guardrails", "models", "user", "simulation",
          "prepare", "evaluation", "training", "reports", "integrations", "cli"]


def _imports(root: Path, depth: int = 1) -> dict[str, set[str]]:
    """Which parts of the package each part imports (relative or absolute, lazy ones included); a
    part is a top-level module or folder, or with ``depth`` 2 one level below it."""
    edges: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        part = ".".join(path.relative_to(root).with_suffix("").parts[:depth])
        package = list(path.relative_to(root).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [alias.name for alias in node.names][:1])
            elif node.module and node.module.startswith("userlm."):
                target = node.module.split(".")[1:]
            else:
                continue
            name = ".".join(target[:depth])
            if target and name != part:
                edges.setdefault(part, set()).add(name)
    return edges


def test_every_part_imports_only_the_parts_below_it():
    root = Path(userlm.__file__).parent
    edges = _imports(root)
    upward = []
    for part, targets in edges.items():
        if part in ("__init__", "__main__"):
            continue
        assert part in LAYERS, f"{part} is not placed in the layering; add it to LAYERS"
        upward += [f"{part} -> {t}" for t in targets if t in LAYERS and LAYERS.index(t) >= LAYERS.index(part)]
    assert upward == []
    assert "training" not in edges.get("evaluation", set())  # the cycle training <-> evaluation is gone
    assert "evaluation" not in edges.get("models", set())


def test_the_two_evaluations_are_separate_parts():
    """Evaluating user simulators and evaluating assistants share only what lies beside them in
    ``evaluation/`` (statistics, tables, text), never each other's modules."""
    edges = _imports(Path(userlm.__file__).parent, depth=2)
    assert "evaluation.assistants" not in edges["evaluation.simulators"]
    assert "evaluation.simulators" not in edges["evaluation.assistants"]
    shared = {"evaluation.metrics", "evaluation.tables", "evaluation.text"}
    for part in shared:
        assert not edges.get(part, set()) & {"evaluation.simulators", "evaluation.assistants"}
