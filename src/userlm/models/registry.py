"""Turn ``provider:name`` strings into model objects (done once, at the CLI or API edge).

========================  =====================================================
``hf:<path or hub id>``   a local transformers checkpoint (user or assistant)
``vllm:<path or hub id>`` a checkpoint in vLLM's engine, in this process (user or assistant)
``openai:<model>``        any OpenAI-compatible server (user: completions, assistant: chat)
``prompted:<spec>``       a chat model given by ``<spec>`` prompted to play the user
``python:<mod>:<fn>``     a Python function as the assistant (also ``path/file.py:fn``)
``scripted:<file>``       replays the turns in a JSON list or text file (tests, demos)
========================  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UserError
from .base import ChatModel, SamplingSettings, UserModel
from .hf.local import LoadOptions
from .http.openai_compat import Endpoint
from .scale.replicas import ReplicaPlacement
from .vllm.engine import VLLMOptions

USER_PROVIDERS = ("hf", "vllm", "openai", "prompted", "scripted")
ASSISTANT_PROVIDERS = ("hf", "vllm", "openai", "python", "scripted")


@dataclass(frozen=True)
class ProviderOptions:
    """Options for one side (user or assistant) of a simulation."""

    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    endpoint: Endpoint = field(default_factory=Endpoint)
    load: LoadOptions = field(default_factory=LoadOptions)
    vllm: VLLMOptions = field(default_factory=VLLMOptions)
    end_token_id: int | None = None  #: id of <|endconversation|> on an HTTP user model's server
    replicas: int = 1  #: copies of an hf:/vllm: model, as Ray actors (needs ``ray``)
    ray: str | None = None  #: the Ray cluster: "auto" or the head's host:port
    placement: ReplicaPlacement = field(default_factory=ReplicaPlacement)
    side: str = "user"  #: which flags to name in errors (user or assistant)


def _replicated(kind: str, spec: str, options: ProviderOptions):
    """``spec`` as Ray replicas or over several servers when the options ask for it, else None."""
    if kind == "openai" and options.endpoint.base_url and "," in options.endpoint.base_url:
        from .scale.replicas import server_replicas

        urls = [u.strip() for u in options.endpoint.base_url.split(",") if u.strip()]
        single = [replace(options, endpoint=replace(options.endpoint, base_url=u)) for u in urls]
        make = user_model if options.side == "user" else chat_model
        return server_replicas(spec, [make(spec, o) for o in single])
    if options.replicas == 1:
        return None
    if kind not in ("hf", "vllm"):
        raise UserError(f"--{options.side}-replicas applies to hf: and vllm: models; for openai: give several servers "
                        f"as --{options.side}-base-url URL,URL.")
    if not options.ray:
        raise UserError(f"--{options.side}-replicas {options.replicas} needs a Ray cluster: add --ray auto (this machine's "
                        "cluster, or a new local one) or --ray HOST:PORT (a cluster's head).")
    from functools import partial

    from .scale.replicas import ray_replicas

    _, name = spec.split(":", 1)
    make = partial(_engine_model, kind, name, replace(options, replicas=1, ray=None), options.side)
    return ray_replicas(spec, make, options.replicas, options.ray, options.placement, sampling=options.sampling)


def _split(spec: str, valid: tuple[str, ...], side: str) -> tuple[str, str]:
    kind, sep, name = spec.partition(":")
    if not sep or kind not in valid or not name:
        raise UserError(
            f"unknown {side} model {spec!r}; use one of " + ", ".join(f"{k}:<name>" for k in valid) + "."
        )
    return kind, name


def _engine_model(kind: str, name: str, options: ProviderOptions, side: str):
    """A model in this process: transformers (``hf:``) or vLLM's engine (``vllm:``), as the user or the assistant."""
    if kind == "hf":
        from .hf.local import LocalChatModel, LocalUserModel

        local = LocalUserModel if side == "user" else LocalChatModel
        return local(name, sampling=options.sampling, options=options.load)
    from .vllm.engine import VLLMChatModel, VLLMUserModel

    engine = VLLMUserModel if side == "user" else VLLMChatModel
    return engine(name, sampling=options.sampling, options=options.vllm)


def user_model(spec: str, options: ProviderOptions = ProviderOptions()) -> UserModel:
    """Resolve a user-model spec such as ``hf:microsoft/UserLM-8b`` or ``prompted:openai:gpt-4o``."""
    kind, name = _split(spec, USER_PROVIDERS, "user")
    pool = _replicated(kind, spec, replace(options, side="user"))
    if pool is not None:
        return pool
    if kind in ("hf", "vllm"):
        return _engine_model(kind, name, options, "user")
    if kind == "openai":
        from .http.openai_compat import OpenAIUserModel

        return OpenAIUserModel(
            name, endpoint=options.endpoint, sampling=options.sampling, end_token_id=options.end_token_id
        )
    if kind == "prompted":
        from .prompted import PromptedUser

        if name.split(":", 1)[0] not in ASSISTANT_PROVIDERS:
            raise UserError(f"prompted:{name}: name the chat model to prompt, e.g. prompted:openai:gpt-4o-mini.")
        return PromptedUser(chat_model(name, options))
    from .doubles.scripted import ScriptedUser, load_script

    return ScriptedUser(load_script(name), name=spec)


def chat_model(spec: str, options: ProviderOptions = ProviderOptions()) -> ChatModel:
    """Resolve an assistant spec such as ``openai:gpt-4o-mini`` or ``python:my_module:reply``."""
    kind, name = _split(spec, ASSISTANT_PROVIDERS, "assistant")
    pool = _replicated(kind, spec, replace(options, side="assistant") if options.side == "user" else options)
    if pool is not None:
        return pool
    if kind in ("hf", "vllm"):
        return _engine_model(kind, name, options, "assistant")
    if kind == "openai":
        from .http.openai_compat import OpenAIChatModel

        return OpenAIChatModel(name, endpoint=options.endpoint, sampling=options.sampling)
    if kind == "python":
        from .doubles.function import FunctionAssistant, import_function

        return FunctionAssistant(import_function(name), name=spec)
    from .doubles.scripted import ScriptedAssistant, load_script

    return ScriptedAssistant(load_script(name), name=spec)
