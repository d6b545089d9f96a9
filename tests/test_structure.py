"""The package's layering: each part imports only the parts below it, so there is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import userlm

#: bottom to top: errors, files, the ledger of ids and the data that ships with the package, records and rendering, guardrails, models, simulated user, resuming, runner, data
#: preparation, evaluation, training, reports, integrations, command line
LAYERS = ["errors", "files", "ledger", "data", "conversation", "intents", "runs", "prompts", "render", "guardrails", "faults", "models", "user", "resume", "simulation",
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


def _module_imports(root: Path) -> dict[str, set[str]]:
    """Which modules of the package each module imports (relative or absolute, lazy ones included),
    file by file; a package's ``__init__`` is the package's own name."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = list(path.relative_to(root).parent.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("userlm."):
                base = node.module.split(".")[1:]
            else:
                continue
            for target in [base] + [base + [alias.name] for alias in node.names]:  # a module, or a name in it
                other = ".".join(target)
                if other in modules and other not in (name, ""):  # every import runs userlm/__init__: not an edge
                    edges.setdefault(name, set()).add(other)
    return edges


def test_no_module_imports_itself_through_others():
    """No import cycle between files either, not even inside one part (a lazy import counts)."""
    edges = _module_imports(Path(userlm.__file__).parent)
    cycles = []
    for start in edges:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert cycles == []



ENGINES = ("hf", "vllm", "http", "scale", "doubles")


def test_each_engine_folder_of_models_stands_alone_and_no_module_takes_anothers_private_names():
    """``models/`` is split by engine: an engine's folder imports what ``models/`` shares
    (interfaces, the turn reader, the handle, vocabulary tables), never another engine's folder;
    and no module anywhere imports a private (underscored) name of another."""
    root = Path(userlm.__file__).parent
    edges = _module_imports(root)
    across = [f"{a} -> {b}" for a, targets in edges.items() for b in targets
              if a.startswith("models.") and b.startswith("models.") and a.split(".")[1] in ENGINES
              and b.split(".")[1] in ENGINES and a.split(".")[1] != b.split(".")[1]]
    assert across == []
    private = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("userlm")):
                private += [f"{path.relative_to(root)}: {alias.name}" for alias in node.names
                            if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []
    assert {p.name for p in (root / "models").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ENGINES)
