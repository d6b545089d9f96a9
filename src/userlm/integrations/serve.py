"""A guarded simulated user behind an OpenAI-compatible chat API, for frameworks that play the user
with a chat model (tau2-bench, DeepEval, openevals, promptfoo, inspect_ai, ...).

    userlm serve --user hf:microsoft/UserLM-8b --port 8000 --stop-marker '###STOP###'

The caller plays the assistant: ``POST /v1/chat/completions`` with the conversation so far returns
the simulated user's next turn, drafted under the guardrails, or the stop marker when the user ends
(or every draft was refused). Two views of the conversation are accepted:

* ``flipped`` (the default: what those frameworks send to a prompted user): ``system`` is the
  scenario or intent, ``assistant`` messages are the user's earlier turns, ``user`` messages the
  agent's replies;
* ``plain``: ``system`` is the intent, ``user`` the user's turns, ``assistant`` the agent's.

``seed`` is honoured (the same request and seed give the same turn on a local model), and so are
``temperature``, ``top_p``, ``max_completion_tokens`` (or ``max_tokens``: a cap on the turn's
tokens, each draft's) and ``stop`` (the turn cut before the first of up to four sequences); what a
request leaves out, the server's flags decide. A user model that samples only its own way (a
script, a function) refuses them with a 400 naming the parameter. What the endpoint cannot mean (``tools``, ``response_format``,
``logprobs``, ``logit_bias``, penalties, ``n`` > 1, ``stream``, ...) is a 400 naming the parameter; a model other
than the one served (its id in ``/v1/models``, or ``userlm``) is a 404; a conversation past the user
model's context is a 400 with code ``context_length_exceeded``; every error, whatever its status
(404 and 413 included), is OpenAI's JSON error shape. ``tool`` messages belong to the agent's side
(the simulated user sees them as the agent's). A framework's canned request that the user open the
conversation (openevals' "Generate an initial query ...", alone after the system message) is read as
no message: the user writes the first turn. A turn ended because every draft was refused answers
with its own marker (``--exhausted-marker``), never the stop marker, and ``finish_reason`` is
``length`` when the user model's token budget cut the turn. A request's conversation is what the client names (the
``X-Conversation-Id`` header, a ``conversation_id`` field or ``metadata.conversation_id``), else its
intent and first user turn: a local model keeps that conversation's cache between its requests. The answer's ``userlm`` field says how the turn came about:
refused drafts with their reasons, attempts, P(end) where known, and why the user stopped.
Concurrent requests to a local model run as one batch.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from ..models.base import ContextOverflow, Samples, SamplesPerRequest, SamplingSettings
from ..models.handle import Handles
from ..render import END_OF_CONVERSATION, flipped_view
from ..user import SimulatedUser

VIEWS = ("flipped", "plain")


class BadRequest(ValueError):
    """A request the server cannot serve, explained in one sentence (answered with 400, or ``status``)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


#: request fields the endpoint cannot mean: a request that sets one is refused, naming it
UNSUPPORTED = {
    "tools": "the simulated user calls no tools",
    "tool_choice": "the simulated user calls no tools",
    "functions": "the simulated user calls no functions",
    "function_call": "the simulated user calls no functions",
    "parallel_tool_calls": "the simulated user calls no tools",
    "response_format": "the simulated user writes plain turns, never JSON or a schema",
    "logprobs": "the simulated user's log-probabilities are not returned (P(end) is in the userlm field)",
    "top_logprobs": "the simulated user's log-probabilities are not returned (P(end) is in the userlm field)",
    "logit_bias": "the guardrails decide which tokens may be sampled",
    "audio": "the simulated user writes text only",
    "prediction": "predicted outputs are not supported",
    "presence_penalty": "the guardrails' no-repetition rule stands in for penalties",
    "frequency_penalty": "the guardrails' no-repetition rule stands in for penalties",
    "reasoning_effort": "the simulated user does not reason before its turn",
}
#: the most stop sequences a request may give (as OpenAI's API allows)
MAX_STOPS = 4
#: what frameworks send a prompted user as the agent's "message" when the user is to open the
#: conversation (openevals): alone after the system message, it means "write the first turn"
OPENERS = ("Generate an initial query to start a conversation",)
#: the largest request body the server reads
MAX_BODY = 8 * 2**20
#: the name every served user model also answers to
ALIAS = "userlm"


@dataclass(frozen=True)
class ServeSettings:
    view: str = "flipped"  #: how the caller lays out the conversation (see the module docs)
    stop_marker: str = END_OF_CONVERSATION  #: the answer's text when the user ends
    exhausted_marker: str = "<|guardrail_exhausted|>"  #: the answer's text when every draft was refused
    api_key: str | None = None  #: the bearer token callers must send, if any
    model_name: str | None = None  #: the id /v1/models lists (default: the user model's spec)

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ConfigurationError(f"unknown --view {self.view!r}; use one of {', '.join(VIEWS)}.")
        if not self.stop_marker:
            raise ConfigurationError("--stop-marker must not be empty.")
        if not self.exhausted_marker or self.exhausted_marker == self.stop_marker:
            raise ConfigurationError("--exhausted-marker must be set and differ from --stop-marker, so that a turn whose every "
                                     "draft was refused is never read as the user stopping.")


def _text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"messages[{index}]: only text content parts are supported.")
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest(f"messages[{index}].content must be a string or a list of text parts.")


def conversation_of(body: Any, view: str) -> tuple[str | None, list[dict[str, str]]]:
    """The intent and the conversation in the simulated user's own view (its turns as ``user``)."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest('the request needs "messages", a list of {"role", "content"} objects.')
    if body.get("stream"):
        raise BadRequest("stream is not supported; send stream: false.", param="stream", code="unsupported_parameter")
    if body.get("n", 1) not in (1, None):
        raise BadRequest("n must be 1: the simulated user writes one next turn.", param="n", code="unsupported_parameter")
    for name, why in UNSUPPORTED.items():
        if body.get(name) not in (None, False, [], {}, 0):
            raise BadRequest(f"{name} is not supported: {why}; leave it out.", param=name, code="unsupported_parameter")
    intents, turns = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest(f'messages[{index}] must be an object with "role" and "content".')
        role, text = message["role"], _text(message.get("content"), index)
        if role in ("system", "developer"):
            intents.append(text)
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": text})
        elif role == "tool":  # a tool's result is the agent's: the simulated user sees it on the agent's side
            turns.append({"role": "user" if view == "flipped" else "assistant", "content": text})
        else:
            raise BadRequest(f"messages[{index}]: role {role!r} is not supported; use system, user, assistant and tool.",
                             param=f"messages[{index}].role")
    if view == "flipped" and len(turns) == 1 and turns[0]["role"] == "user" and turns[0]["content"].startswith(OPENERS):
        turns = []  # the framework asks the user to open: no agent message came before
    if view == "flipped":
        turns = flipped_view(turns)
    intent = "\n\n".join(t for t in intents if t.strip()) or None
    return intent, turns


def conversation_key(body: dict, intent: str | None, turns: list[dict[str, str]], header: str | None = None) -> str:
    """Which conversation a request belongs to (engines keep its cache and route its turns by it):
    what the client says (the ``X-Conversation-Id`` header, a ``conversation_id`` field or
    ``metadata.conversation_id``), else the conversation's own beginning, its intent and the
    simulated user's first turn, which every later request of it repeats. Never the seed."""
    named = header or body.get("conversation_id") or (body.get("metadata") or {}).get("conversation_id")
    if named is not None:
        if not isinstance(named, str) or not named.strip():
            raise BadRequest("conversation_id must be a non-empty string.")
        return f"client:{named}"
    first = next((t["content"] for t in turns if t["role"] == "user"), "")
    digest = hashlib.blake2b(json.dumps([intent, first]).encode(), digest_size=16).hexdigest()
    return f"prefix:{digest}"


@dataclass(frozen=True)
class TurnSampling:
    """What a request asks of the turn's sampling: its own settings (None: the server's) and its stop sequences."""

    settings: SamplingSettings | None
    stops: tuple[str, ...] = ()
    named: tuple[str, ...] = ()  #: the sampling parameters the request set


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low:g} to {high:g}.", param=name, code="invalid_value")
    return float(value)


def turn_sampling(body: dict, default: SamplingSettings) -> TurnSampling:
    """The request's ``temperature``, ``top_p``, ``max_completion_tokens`` (or ``max_tokens``) and
    ``stop``, checked as OpenAI checks them. ``top_p`` 0 keeps the most likely token alone."""
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    cap_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    cap = body.get(cap_name)
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise BadRequest(f"{cap_name} must be a positive integer.", param=cap_name, code="invalid_value")
    stop = body.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, list) else () if stop is None else None
    if stops is None or len(stops) > MAX_STOPS or not all(isinstance(x, str) and x for x in stops):
        raise BadRequest(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them.", param="stop", code="invalid_value")
    named = tuple(n for n, v in (("temperature", temperature), ("top_p", top_p), (cap_name, cap)) if v is not None)
    if not named:
        return TurnSampling(None, stops)
    settings = SamplingSettings(temperature=default.temperature if temperature is None else temperature,
                                top_p=default.top_p if top_p is None else max(top_p, 1e-9),
                                max_new_tokens=default.max_new_tokens if cap is None else cap)
    return TurnSampling(settings, stops, named)


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The text up to the first of the stop sequences (left out, as OpenAI leaves them), and whether one was found."""
    at = min((i for i in (text.find(x) for x in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


async def next_user_turn(user: SimulatedUser, body: dict, settings: ServeSettings, header: str | None = None,
                         handles: Handles | None = None) -> dict[str, Any]:
    """The chat-completion answer for one request: the next user turn or the stop marker.
    ``handles`` keeps each conversation's handle between its requests (its token ids as sampled)."""
    intent, turns = conversation_of(body, settings.view)
    served = settings.model_name or user.name
    model = body.get("model")
    if model is not None and model not in (served, ALIAS):
        raise BadRequest(f"The model {model!r} does not exist here; this server serves {served!r} (it also answers to {ALIAS!r}).",
                         param="model", code="model_not_found", status=404)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise BadRequest("seed must be an integer.")
    if body.get("metadata") is not None and not isinstance(body.get("metadata"), dict):
        raise BadRequest("metadata must be an object.")
    sampling = turn_sampling(body, user.model.sampling if isinstance(user.model, Samples) else SamplingSettings())
    if sampling.named and not isinstance(user.model, SamplesPerRequest):
        raise BadRequest(f"{sampling.named[0]} is not supported: the user model {user.name} samples with the server's settings "
                         "only; leave it out, or set them when starting the server.", param=sampling.named[0], code="unsupported_parameter")
    key = conversation_key(body, intent, turns, header)
    seed = seed if seed is not None else random.randrange(2**31)
    try:
        turn = await user.next_turn(intent, turns, seed=seed, conversation=handles.get(key, seed) if handles is not None else key,
                                    sampling=sampling.settings)
    except ContextOverflow as exc:
        raise BadRequest(f"{exc}", param="messages", code="context_length_exceeded") from None
    stopped = turn.text is None
    reason = None if not stopped else ("user_ended" if turn.ended else "guardrail_exhausted")
    content, cut = _cut(turn.text, sampling.stops) if turn.text is not None else (
        settings.stop_marker if turn.ended else settings.exhausted_marker, False)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served,
        "choices": [{"index": 0, "finish_reason": "length" if turn.truncated and not (stopped or cut) else "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": turn.usage.prompt_tokens, "completion_tokens": turn.usage.completion_tokens,
                  "total_tokens": turn.usage.prompt_tokens + turn.usage.completion_tokens},
        "userlm": {"ended": stopped, "end_reason": reason, "attempts": turn.attempts, "end_prob": turn.end_prob, "faults": turn.faults,
                   "refused": [r.model_dump(exclude_none=True) for r in turn.rejected]},
    }


def make_app(user: SimulatedUser, settings: ServeSettings = ServeSettings()):
    """The aiohttp application: ``GET /v1/models`` and ``POST /v1/chat/completions``."""
    from aiohttp import web

    handles = Handles()  # each conversation's handle, by the key its requests carry

    def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
              code: str | None = None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status)

    @web.middleware
    async def json_errors(request: web.Request, handler):
        """aiohttp's own refusals (no such path, wrong method, a body over the size limit) in OpenAI's error shape."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            words = {404: f"no such endpoint: {request.method} {request.path}; this server answers GET /v1/models and "
                          "POST /v1/chat/completions.",
                     405: f"{request.method} is not allowed on {request.path}.",
                     413: f"the request body is over the server's limit of {MAX_BODY // 2**20} MiB."}
            return error(exc.status, words.get(exc.status, exc.reason), code={404: "not_found", 413: "request_too_large"}.get(exc.status))

    @web.middleware
    async def authorised(request: web.Request, handler):
        if settings.api_key is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {settings.api_key}".encode()):
                return error(401, "missing or wrong bearer token; send Authorization: Bearer <the server's --api-key>.",
                             "authentication_error", code="invalid_api_key")
        return await handler(request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": settings.model_name or user.name, "object": "model", "created": 0, "owned_by": "userlm"}]})

    async def chat(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the request body is not JSON.")
        try:
            return web.json_response(await next_user_turn(user, body, settings, request.headers.get("X-Conversation-Id"), handles))
        except BadRequest as exc:
            return error(exc.status, str(exc), param=exc.param, code=exc.code)
        except ConfigurationError as exc:
            return error(500, str(exc), "server_error")
        except Exception as exc:  # the model failed: the caller hears it in one sentence, the server goes on
            return error(500, f"the user model failed: {type(exc).__name__}: {exc}", "server_error")

    app = web.Application(middlewares=[json_errors, authorised], client_max_size=MAX_BODY)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve(user: SimulatedUser, settings: ServeSettings, host: str, port: int, ready=print) -> None:
    """Serve until cancelled."""
    import asyncio

    from aiohttp import web

    runner = web.AppRunner(make_app(user, settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port.") from None
        ready(f"serving the simulated user {user.name} at http://{host}:{port}/v1 (view: {settings.view}; "
              f"stop marker: {settings.stop_marker}); Ctrl-C stops")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
