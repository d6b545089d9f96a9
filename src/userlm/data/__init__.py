"""Public data that ships with userlm: what the demo and the built-in defaults run on offline.

Each file is kept byte for byte as its authors published it, with their license beside it
(``README.md`` in this folder gives every file's origin and license). Commands name them by
their short names: ``userlm demo`` trains on ``oasst``, ``userlm eval-assistant --tasks gsm8k``
(or ``humaneval``, ``sharded``) runs a built-in suite, ``userlm eval-user --data oasst`` (or
``simulator-arena``) evaluates against real people's conversations; ``oasst-prompts`` are real
first turns (the tests train their tiny tokenizers on them, in a clone as in CI).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: short name -> file inside this folder
BUILTIN = {
    "oasst": "oasst/en_100_tree.jsonl",
    "oasst-prompts": "oasst/prompt_lottery_en_250_text.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
    "humaneval": "humaneval/HumanEval.jsonl.gz",
    "sharded": "lost_in_conversation/sharded_translation.json",
    "simulator-arena": "simulator-arena/document_creation_annotations_for_benchmarking.json",
}


#: the built-in sets that are chat logs: ``userlm prepare`` and ``eval-user --data`` take their names
CONVERSATIONS = ("oasst", "simulator-arena")


def conversations_source(source: str) -> str:
    """A built-in chat-log set's file for its name; any other source as it is."""
    return str(builtin_path(source)) if source in CONVERSATIONS else source


def builtin_path(name: str) -> Path:
    """The file of a built-in data set, by its short name (see :data:`BUILTIN`)."""
    if name not in BUILTIN:
        raise KeyError(f"no built-in data set {name!r}; there are {', '.join(BUILTIN)}")
    path = Path(str(files(__name__) / BUILTIN[name]))
    if not path.is_file():  # an install that dropped package data, or a zipped one
        raise FileNotFoundError(f"{path}: the built-in {name} data is missing from this install of userlm; reinstall it with pip.")
    return path
