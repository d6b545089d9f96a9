"""Models behind any OpenAI-compatible server (OpenAI, vLLM, ``transformers serve``, ...).

Assistants use the chat completions endpoint. User models use the plain completions endpoint
with the prompt rendered by :mod:`userlm.render` and ``<|eot_id|>`` as the stop, so a UserLM
served by vLLM works as it is. Retries (429, 5xx, timeouts, honouring Retry-After, bounded)
are the openai client's own; each model has its own concurrency limit.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..render import END_OF_CONVERSATION, END_OF_TURN, user_prompt_text
from .base import ChatReply, SamplingSettings, UserDraft, UserTurnRequest

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """Where a server is and how patiently to talk to it."""

    base_url: str | None = None  #: None: OPENAI_BASE_URL, else the OpenAI API
    max_retries: int = 5
    timeout_s: float = 120.0
    concurrency: int = 32

    def resolve(self) -> tuple[str | None, str]:
        """The base URL and API key to use (the key is never logged or stored)."""
        base_url = self.base_url or os.environ.get("OPENAI_BASE_URL")
        # Local servers (vLLM, transformers serve) take any key; the client insists on one.
        api_key = os.environ.get("OPENAI_API_KEY") or ("EMPTY" if base_url else None)
        if api_key is None:
            raise ConfigurationError(
                "OPENAI_API_KEY is not set; export it, or point --user-base-url/--assistant-base-url "
                "(or OPENAI_BASE_URL) at a local server."
            )
        return base_url, api_key

    def client(self, http_client: httpx.AsyncClient | None = None) -> AsyncOpenAI:
        from openai import AsyncOpenAI

        base_url, api_key = self.resolve()
        return AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=self.max_retries,
            timeout=self.timeout_s,
            http_client=http_client or _fast_transport(),
        )


def _fast_transport():
    """aiohttp under the openai client where it is installed (``openai[aiohttp]``): its connection
    pool costs far less CPU per request than the default one at a hundred connections and more."""
    try:
        from openai import DefaultAioHttpClient

        return DefaultAioHttpClient()
    except (ImportError, RuntimeError):
        return None


def _aiohttp_session(endpoint: Endpoint):
    try:
        import aiohttp
    except ImportError:  # the openai client alone then
        return None
    from aiohttp.client_reqrep import ClientRequest

    from .eager import start_eagerly

    start_eagerly(asyncio.get_running_loop(), [ClientRequest.write_bytes])  # Python 3.11: requests leave at once
    connector = aiohttp.TCPConnector(limit=max(endpoint.concurrency, 1), ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=endpoint.timeout_s))


async def _fast_post(session, url: str, body: dict[str, Any], api_key: str) -> dict[str, Any] | float:
    """The JSON answer of a 200, else how long to wait before the openai client takes over."""
    import aiohttp

    try:
        async with session.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"}) as response:
            if response.status == 200:
                return await response.json(content_type=None)
            if response.status in (429, 503):
                try:
                    return min(max(float(response.headers.get("retry-after", 0)), 0.0), 60.0)
                except ValueError:
                    return 0.0
            return 0.0
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return 0.0


def _fatal(exc: Exception, model: str, base_url: str) -> Exception:
    """Errors that would fail every conversation the same way abort the run with one sentence."""
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return ConfigurationError(f"{base_url} refused the API key for {model} (401); check OPENAI_API_KEY.")
    if isinstance(exc, openai.PermissionDeniedError):
        return ConfigurationError(f"{base_url} denied access to {model} (403); check the key's permissions.")
    if isinstance(exc, openai.NotFoundError):
        return ConfigurationError(f"{base_url} has no model {model!r} or no such endpoint (404); check the model name.")
    if isinstance(exc, openai.APIConnectionError) and (not isinstance(exc, openai.APITimeoutError) or _refused(exc)):
        return ConfigurationError(f"cannot reach {base_url} for {model}; is the server running?")
    return exc


def _refused(exc: BaseException) -> bool:
    """Whether a connection error was a refused connection (some transports report it as a timeout)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _OpenAIModel:
    remote = True  #: answers over the network

    def __init__(self, model: str, *, endpoint: Endpoint, sampling: SamplingSettings, client: Any = None):
        self.model = model
        self.endpoint = endpoint
        self.sampling = sampling
        self._fixed_client = client
        base_url, _ = endpoint.resolve()  # a missing key is an error now, not at the first request
        self.base_url = str(client.base_url) if client is not None else (base_url or "https://api.openai.com/v1")
        # clients and limits belong to an event loop: each asyncio.run gets its own
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, asyncio.Semaphore, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def _state(self) -> tuple[Any, asyncio.Semaphore, Any]:
        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            client = self._fixed_client or self.endpoint.client()
            session = None if self._fixed_client is not None else _aiohttp_session(self.endpoint)
            self._per_loop[loop] = (client, asyncio.Semaphore(self.endpoint.concurrency), session)
        return self._per_loop[loop]

    async def aclose(self) -> None:
        """Close this event loop's connections (the simulation runner calls it at the end)."""
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state is not None and self._fixed_client is None:
            await state[0].close()
            if state[2] is not None:
                await state[2].close()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a request and return the JSON answer.

        The first try is a plain POST on a pooled aiohttp session (little CPU per request, which
        is what keeps a hundred conversations in flight cheap). Anything but a 200 hands the
        request to the openai client, which retries with backoff, honours Retry-After and raises
        its typed errors; a 429 or 503 is first waited out as its Retry-After asks.
        """
        client, limit, session = self._state()
        async with limit:
            if session is not None:
                wait = await _fast_post(session, f"{self.base_url.rstrip('/')}{path}", body, client.api_key)
                if isinstance(wait, dict):
                    return wait
                if wait:
                    await asyncio.sleep(wait)
            try:
                return await client.post(path, body=body, cast_to=dict)
            except Exception as exc:
                raise _fatal(exc, self.model, self.base_url) from exc

    def _sampling_args(self) -> dict[str, Any]:
        return {
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "max_tokens": self.sampling.max_new_tokens,
        }


class OpenAIChatModel(_OpenAIModel):
    """An assistant (or judge, or prompted user) behind ``/v1/chat/completions``."""

    def __init__(self, model: str, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.name = f"openai:{model}"

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None) -> ChatReply:
        body = {"model": self.model, "messages": messages, **self._sampling_args()}
        if seed is not None:
            body["seed"] = seed
        response = await self._post("/chat/completions", body)
        usage = response.get("usage") or {}
        return ChatReply(
            text=response["choices"][0]["message"].get("content") or "",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        )


class OpenAIUserModel(_OpenAIModel):
    """A UserLM-format user model behind ``/v1/completions``.

    Termination control sends ``logit_bias`` of -100 on the id of ``<|endconversation|>``
    (given as ``end_token_id``, else asked of the server's vLLM-style ``/tokenize``); the
    guardrails also refuse a premature end client-side, for servers that ignore the bias.
    ``end_threshold`` needs a server that returns ``logprobs``.
    """

    def __init__(self, model: str, *, end_token_id: int | None = None, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.name = f"openai:{model}"
        self._end_token_id = end_token_id
        self._end_id_looked_up = end_token_id is not None

    async def _end_id(self) -> int | None:
        if not self._end_id_looked_up:
            self._end_id_looked_up = True
            self._end_token_id = await self._tokenize_end_token()
            if self._end_token_id is None:
                log.warning(
                    "%s: could not look up the id of %s (no /tokenize endpoint); premature ends are refused "
                    "client-side only. Pass --user-end-token-id to bias them away at the server.",
                    self.name,
                    END_OF_CONVERSATION,
                )
        return self._end_token_id

    async def _tokenize_end_token(self) -> int | None:
        root = self.base_url.rstrip("/").removesuffix("/v1")
        client, _, _ = self._state()
        try:
            response = await client._client.post(
                f"{root}/tokenize",
                json={"model": self.model, "prompt": END_OF_CONVERSATION, "add_special_tokens": False},
                headers={"Authorization": f"Bearer {client.api_key}"},
            )
            tokens = response.json().get("tokens") if response.status_code == 200 else None
        except Exception:  # a server without /tokenize: fall back to the client-side check
            return None
        return tokens[0] if isinstance(tokens, list) and len(tokens) == 1 else None

    async def _complete(self, **body: Any) -> dict[str, Any]:
        return await self._post("/completions", {"model": self.model, **body})

    async def end_probability(self, prompt: str, seed: int) -> float:
        """P(<|endconversation|>) as the first token of the turn, from the server's logprobs."""
        response = await self._complete(prompt=prompt + "\n", max_tokens=1, logprobs=20, temperature=1.0, seed=seed)
        logprobs = response["choices"][0].get("logprobs")
        if not logprobs or not logprobs.get("top_logprobs"):
            raise ConfigurationError(
                f"{self.base_url} does not return logprobs for {self.model}; --end-threshold needs a server "
                "that does (vLLM does), or drop --end-threshold."
            )
        top = logprobs["top_logprobs"][0] or {}
        return math.exp(top[END_OF_CONVERSATION]) if END_OF_CONVERSATION in top else 0.0

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        prompt = user_prompt_text(request.intent, request.messages)
        end_prob = None
        prompt_tokens = 0
        if request.end_threshold is not None and request.allow_end:
            end_prob = await self.end_probability(prompt, request.seed)
            if end_prob >= request.end_threshold:
                return UserDraft(text="", ended=True, end_prob=end_prob)
        suppress_end = not request.allow_end or request.end_threshold is not None
        end_id = await self._end_id() if suppress_end else None
        bias = {"logit_bias": {str(end_id): -100}} if end_id is not None else {}
        response = await self._complete(
            prompt=prompt, stop=[END_OF_TURN], seed=request.seed, **bias, **self._sampling_args()
        )
        choice = response["choices"][0]
        raw = choice.get("text") or ""
        text = raw.replace(END_OF_TURN, "").strip()
        # Servers that drop special tokens from the text return an end as an empty stopped turn.
        ended = text == END_OF_CONVERSATION or (not text and choice.get("finish_reason") == "stop")
        usage = response.get("usage") or {}
        return UserDraft(
            text="" if ended else text,
            ended=ended,
            end_prob=end_prob,
            prompt_tokens=prompt_tokens + usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        )
