"""userlm: simulate, train and evaluate user language models.

Quick start::

    import userlm

    user = userlm.load_user("hf:microsoft/UserLM-8b")
    assistant = userlm.load_assistant("openai:gpt-4o-mini")
    run = userlm.simulate(["You want to ..."], user, assistant, out="runs/demo.jsonl")

``import userlm`` stays light: torch and transformers load only when a local model does.
"""

from __future__ import annotations

from typing import Any

from .conversation import SCHEMA_VERSION, Conversation, Message, read_conversations
from .errors import UserError
from .guardrails import GuardrailConfig
from .intents import Intent, IntentFile, load_intents
from .models.base import ChatModel, ChatReply, SamplingSettings, UserDraft, UserModel, UserTurnRequest
from .simulation import RunSettings, RunSummary, simulate, simulate_async
from .user import SimulatedUser, UserSession

__version__ = "0.1.0"


def load_user(spec: str | UserModel, guardrails: GuardrailConfig | None = None, **options: Any) -> SimulatedUser:
    """A simulated user from a spec (``hf:...``, ``openai:...``, ``prompted:...``, ``scripted:...``)
    or a :class:`UserModel` object. ``options`` are fields of
    :class:`userlm.models.registry.ProviderOptions`."""
    from .models.registry import ProviderOptions, user_model

    model = spec if not isinstance(spec, str) else user_model(spec, ProviderOptions(**options))
    return SimulatedUser(model, guardrails)


def load_assistant(spec: str | Any, **options: Any) -> ChatModel:
    """An assistant from a spec (``hf:...``, ``openai:...``, ``python:...``, ``scripted:...``), a
    :class:`ChatModel` object, or a plain function of the message list (sync or async)."""
    from .models.doubles.function import FunctionAssistant
    from .models.registry import ProviderOptions, chat_model

    if isinstance(spec, str):
        return chat_model(spec, ProviderOptions(**options))
    if isinstance(spec, ChatModel):
        return spec
    if callable(spec):
        return FunctionAssistant(spec)
    raise TypeError(f"cannot use {spec!r} as an assistant")


__all__ = [
    "SCHEMA_VERSION",
    "ChatModel",
    "ChatReply",
    "Conversation",
    "GuardrailConfig",
    "Intent",
    "IntentFile",
    "Message",
    "RunSettings",
    "RunSummary",
    "SamplingSettings",
    "SimulatedUser",
    "UserDraft",
    "UserError",
    "UserModel",
    "UserSession",
    "UserTurnRequest",
    "load_assistant",
    "load_intents",
    "load_user",
    "read_conversations",
    "simulate",
    "simulate_async",
]
