"""A plain Python function as the assistant."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import UserError
from ..base import ChatReply
from ..handle import ConversationHandle


class FunctionAssistant:
    """Wraps ``fn(messages) -> str`` (sync or async). Sync functions run in a worker thread so
    that slow ones do not hold up the other conversations."""

    def __init__(self, fn: Callable[[list[dict[str, str]]], Any], name: str | None = None):
        self.fn = fn
        self.name = name or f"python:{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self._is_async = inspect.iscoroutinefunction(fn)

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        copy = [dict(m) for m in messages]  # a function may not change the conversation
        result = await self.fn(copy) if self._is_async else await asyncio.to_thread(self.fn, copy)
        if isinstance(result, ChatReply):
            return result
        if not isinstance(result, str):
            raise TypeError(f"{self.name} returned {type(result).__name__}; an assistant function must return a str")
        return ChatReply(text=result)


def import_function(spec: str) -> Callable:
    """Resolve ``package.module:function`` or ``path/to/file.py:function``."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UserError(f"python:{spec}: name a function as python:module:function or python:path/file.py:function.")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise UserError(f"{target}: no such file.")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())  # a module in the current folder, as `python -c "import m"` finds it
            module = importlib.import_module(target)
    except SyntaxError as exc:
        raise UserError(f"{exc.filename or target}:{exc.lineno}: not valid Python ({exc.msg}); fix the file.") from None
    except ImportError as exc:
        raise UserError(f"python:{spec}: cannot import {target} ({exc}).") from None
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{target} raised {type(exc).__name__} on import: {exc}; it must import cleanly.") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"python:{spec}: {target} has no function {attr!r}.")
    return fn
