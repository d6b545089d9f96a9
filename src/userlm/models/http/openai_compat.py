"""Models behind any OpenAI-compatible server (OpenAI, vLLM, ``transformers serve``, ...).

Assistants use the chat completions endpoint. User models use the plain completions endpoint
with the prompt rendered by :mod:`userlm.render` and ``<|eot_id|>`` as the stop, so a UserLM
served by vLLM works as it is. Every request follows one retry policy (:mod:`.retry`: 5xx, 429,
timeouts, dropped connections and malformed answers are retried with backoff, honouring
Retry-After; an endpoint that keeps failing stops the run); each model has its own concurrency
limit. Requests go over a pooled aiohttp session, or over an ``httpx.AsyncClient`` given as
``http_client`` (tests hand in one with a mock transport).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import math
import os
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import ConfigurationError
from ...render import (
    END_OF_CONVERSATION,
    END_OF_TURN,
    USERLM_TURN_OPENING,
    turn_opening,
    user_prompt_ids,
    user_prompt_string,
    user_prompt_text,
)
from ..base import ChatReply, SamplingSettings, UserDraft, UserTurnRequest, request_sampling
from ..handle import ConversationHandle
from ..retry import (
    Breaker,
    ConnectionLost,
    MalformedResponse,
    RateLimited,
    RequestRejected,
    RequestTimeout,
    RetryPolicy,
    ServerError,
    parse_json,
    with_retries,
)
from ..turn import TurnReader, TurnRules

if TYPE_CHECKING:  # pragma: no cover
    import httpx

T = TypeVar("T")

log = logging.getLogger(__name__)
#: the control tokens a returned text is cut at, to be read as a turn's pieces
_CONTROL = re.compile(f"({re.escape(END_OF_CONVERSATION)}|{re.escape(END_OF_TURN)})")


@dataclass(frozen=True)
class Endpoint:
    """Where a server is and how patiently to talk to it."""

    base_url: str | None = None  #: None: OPENAI_BASE_URL, else the OpenAI API
    max_retries: int = 5  #: attempts per request = max_retries + 1
    timeout_s: float = 120.0
    concurrency: int = 32
    breaker: int = 8  #: requests failed for good in a row (no success between) that stop the run
    flag: str = "--user-base-url/--assistant-base-url"  #: the option that sets base_url, named in errors
    #: the key to send (None: OPENAI_API_KEY, or none for a local server); never shown or recorded
    api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.concurrency < 1 or self.timeout_s <= 0 or self.breaker < 0:
            raise ConfigurationError("--max-retries must be 0 or more, --request-concurrency at least 1 and --timeout above 0.")

    def resolve(self) -> tuple[str | None, str]:
        """The base URL and API key to use (the key is never logged or stored)."""
        base_url = self.base_url or os.environ.get("OPENAI_BASE_URL")
        # Local servers (vLLM, transformers serve) take any key; the client insists on one.
        api_key = self.api_key or os.environ.get("OPENAI_API_KEY") or ("EMPTY" if base_url else None)
        if api_key is None:
            raise ConfigurationError(
                f"OPENAI_API_KEY is not set; export it, or point {self.flag} (or OPENAI_BASE_URL) at a local server."
            )
        return base_url, api_key

    def policy(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, breaker=self.breaker)


def _aiohttp_session(endpoint: Endpoint):
    import aiohttp
    from aiohttp.client_reqrep import ClientRequest

    from ..eager import start_eagerly

    start_eagerly(asyncio.get_running_loop(), [ClientRequest.write_bytes])  # Python 3.11: requests leave at once
    connector = aiohttp.TCPConnector(limit=max(endpoint.concurrency, 1), ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=endpoint.timeout_s))


def _local_tokenizer(model: str) -> Any:
    """The tokenizer of a served model whose name is a local folder holding one (None otherwise)."""
    from pathlib import Path

    folder = Path(model).expanduser()
    if not (folder / "tokenizer_config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:  # a folder it cannot read: the prompt goes as text, as to any server
        log.info("%s: could not load the tokenizer there; prompts go as text", model)
        return None


def _retry_after(headers: Any) -> float | None:
    try:
        value = headers.get("retry-after")
        return None if value is None else float(value)
    except (TypeError, ValueError):  # an HTTP date: backoff instead
        return None


def _refused(exc: BaseException | None) -> bool:
    """Whether a connection error was a refused connection (some transports report it as a timeout)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _error_message(data: bytes) -> str:
    """The server's own words for an error, short."""
    import json

    try:
        answer = json.loads(data)
        error = answer.get("error", answer) if isinstance(answer, dict) else answer
        text = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        text = data.decode("utf-8", errors="replace")
    text = " ".join(str(text).split())
    return text[:200] or "no message"


@dataclass
class _LoopState:
    """What belongs to one event loop: the connection pool, the request limit, the breaker."""

    session: Any  #: aiohttp.ClientSession, or None with an injected httpx client
    limit: asyncio.Semaphore
    breaker: Breaker
    probe: asyncio.Future | None = None  #: the one look-up of the server's kind, shared by concurrent first requests


class _OpenAIModel:
    remote = True  #: answers over the network

    def __init__(self, model: str, *, endpoint: Endpoint, sampling: SamplingSettings, http_client: httpx.AsyncClient | None = None):
        self.model = model
        self.endpoint = endpoint
        self.sampling = sampling
        self.policy = endpoint.policy()
        self._http = http_client
        base_url, api_key = endpoint.resolve()  # a missing key is an error now, not at the first request
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.base_url = (base_url or "https://api.openai.com/v1").rstrip("/")
        # connections and limits belong to an event loop: each asyncio.run gets its own
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if loop not in self._per_loop:
            session = None if self._http is not None else _aiohttp_session(self.endpoint)
            self._per_loop[loop] = _LoopState(session, asyncio.Semaphore(self.endpoint.concurrency),
                                              Breaker(f"{self.base_url} ({self.model})", self.policy.breaker))
        return self._per_loop[loop]

    async def aclose(self) -> None:
        """Close this event loop's connections (the simulation runner calls it at the end)."""
        state = self._per_loop.pop(asyncio.get_running_loop(), None)
        if state is not None and state.session is not None:
            await state.session.close()

    async def _send(self, url: str, body: dict[str, Any], state: _LoopState | None = None) -> tuple[int, Any, bytes]:
        """One POST: status, headers and body; transport failures as :mod:`.retry`'s errors."""
        state = state or self._state()
        headers = self._headers
        if state.session is None:
            import httpx

            assert self._http is not None  # no aiohttp session: the client given at construction

            try:
                response = await self._http.post(url, json=body, headers=headers, timeout=self.endpoint.timeout_s)
                return response.status_code, response.headers, response.content
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"no answer from {url} within {self.endpoint.timeout_s:g} s") from exc
            except httpx.TransportError as exc:
                raise self._connection_error(url, exc, state) from exc
        import aiohttp

        try:
            async with state.session.post(url, json=body, headers=headers) as response:
                return response.status, response.headers, await response.read()
        except asyncio.TimeoutError as exc:
            raise RequestTimeout(f"no answer from {url} within {self.endpoint.timeout_s:g} s") from exc
        except aiohttp.ClientError as exc:
            raise self._connection_error(url, exc, state) from exc

    def _connection_error(self, url: str, exc: BaseException, state: _LoopState) -> Exception:
        if _refused(exc) and not state.breaker.successes:
            return ConfigurationError(f"cannot reach {self.base_url} for {self.model}; is the server running?")
        return ConnectionLost(f"{type(exc).__name__} talking to {url}: {exc}".rstrip(": "))

    async def _post(self, path: str, body: dict[str, Any], parse: Callable[[Any], T]) -> T:
        """POST under the retry policy and return ``parse(answer)``; a ``parse`` that finds the answer
        malformed (a missing key or an empty list) makes the attempt transient."""
        url = f"{self.base_url}{path}"
        state = self._state()

        async def attempt() -> T:
            status, headers, data = await self._send(url, body, state)
            if status == 200:
                answer = parse_json(data)
                try:
                    return parse(answer)
                except (KeyError, IndexError, TypeError, AttributeError) as exc:
                    raise MalformedResponse(f"{url} answered 200 without the expected fields ({type(exc).__name__}: {exc})") from None
            message = _error_message(data)
            if status in (401, 403, 404):
                raise ConfigurationError({
                    401: f"{self.base_url} refused the API key for {self.model} (401); check OPENAI_API_KEY.",
                    403: f"{self.base_url} denied access to {self.model} (403); check the key's permissions.",
                    404: f"{self.base_url} has no model {self.model!r} or no such endpoint (404); check the model name.",
                }[status])
            if status == 429 or status >= 500:
                error = (RateLimited if status == 429 else ServerError)(f"HTTP {status} from {url}: {message}")
                error.retry_after = _retry_after(headers)
                raise error
            raise RequestRejected(f"HTTP {status} from {url}: {message}")

        async with state.limit:
            return await with_retries(attempt, self.policy, state.breaker)
    def _sampling_args(self, sampling: SamplingSettings | None = None) -> dict[str, Any]:
        sampling = sampling or self.sampling
        return {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }


class OpenAIChatModel(_OpenAIModel):
    """An assistant (or judge, or prompted user) behind ``/v1/chat/completions``."""

    def __init__(self, model: str, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.name = f"openai:{model}"

    async def reply(self, messages: list[dict[str, str]], *, seed: int | None = None,
                    conversation: ConversationHandle | None = None) -> ChatReply:
        body = {"model": self.model, "messages": messages, **self._sampling_args()}
        if seed is not None:
            body["seed"] = seed

        def parse(answer: dict[str, Any]) -> ChatReply:
            usage = answer.get("usage") or {}
            return ChatReply(
                text=answer["choices"][0]["message"].get("content") or "",
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
            )

        return await self._post("/chat/completions", body, parse)


class OpenAIUserModel(_OpenAIModel):
    """A UserLM-format user model behind ``/v1/completions``.

    The prompt is the UserLM template rendered as text, with the newline that opens the user
    turn, as the ``hf:`` and ``vllm:`` paths feed it. A server that answers vLLM's ``/tokenize``
    is driven exactly: no begin-of-text token added (``add_special_tokens: false``), the end
    token as a stop token with special tokens kept in the text, P(end) at the first content
    position read from the raw log-probability of the end token itself
    (``logprob_token_ids``), all in the one request. Termination control sends ``logit_bias``
    of -100 on the id of ``<|endconversation|>`` (given as ``end_token_id``, else asked of
    ``/tokenize``); the guardrails also refuse a premature end client-side, for servers that
    ignore the bias. Other servers get plain completions; ``end_threshold`` then needs one that
    returns ``logprobs``, and P(end) comes from the top ``max_logprobs``: an end token outside
    them is recorded as an upper bound (``end_prob_below``), never as zero.

    Where the tokenizer is at hand (``tokenizer``, or the served model's name is a local folder
    holding one, as ``vllm serve DIR`` names it), a vLLM server gets the prompt as token ids,
    rendered as the ``hf:`` and ``vllm:`` paths render it (message text that spells a control
    token stays text), continuing the conversation's handle: the server returns the ids it
    sampled, and the next prompt carries them as sampled.
    """

    def __init__(self, model: str, *, end_token_id: int | None = None, max_logprobs: int = 20, tokenizer: Any = None,
                 **kwargs: Any):
        super().__init__(model, **kwargs)
        self.name = f"openai:{model}"
        self.samples_per_request = True  #: a request's own sampling goes to the server with it
        self.view = f"user:{self.name}"  #: what this model keeps in a conversation's handle
        self._given_tokenizer = tokenizer
        self.max_logprobs = max_logprobs
        self._end_token_id = end_token_id
        self._probed = False
        self.vllm_like = False  #: the server answers vLLM's /tokenize and takes its extra fields
        self._warned_bound = False

    async def _end_id(self) -> int | None:
        if not self._probed:
            state = self._state()
            if state.probe is None:  # concurrent first drafts wait for one look-up
                state.probe = asyncio.ensure_future(self._probe())
            await asyncio.shield(state.probe)
        return self._end_token_id

    async def _probe(self) -> None:
        looked_up = await self._tokenize_end_token()
        if not self._probed:
            self._probed = True
            self.vllm_like = looked_up is not None
            if self._end_token_id is None:
                self._end_token_id = looked_up
            if self._end_token_id is None:
                log.warning(
                    "%s: could not look up the id of %s (no /tokenize endpoint); premature ends are refused "
                    "client-side only. Pass --user-end-token-id to bias them away at the server.",
                    self.name,
                    END_OF_CONVERSATION,
                )

    async def _tokenize_end_token(self) -> int | None:
        root = self.base_url.removesuffix("/v1")
        try:
            status, _, data = await self._send(f"{root}/tokenize",
                                               {"model": self.model, "prompt": END_OF_CONVERSATION, "add_special_tokens": False})
            tokens = parse_json(data).get("tokens") if status == 200 else None
        except Exception:  # a server without /tokenize: fall back to the client-side check
            return None
        return tokens[0] if isinstance(tokens, list) and len(tokens) == 1 else None

    async def _complete(self, **body: Any) -> dict[str, Any]:
        """A completions answer whose first choice is there (else the attempt is retried)."""

        def parse(answer: dict[str, Any]) -> dict[str, Any]:
            choice = answer["choices"][0]
            if not isinstance(choice, dict):
                raise TypeError("a choice is not an object")
            return answer

        return await self._post("/completions", {"model": self.model, **body}, parse)

    @functools.cached_property
    def _tokenizer(self) -> Any:
        """The tokenizer, loaded the first time a vLLM server is to get ids (None where none is at hand)."""
        return self._given_tokenizer if self._given_tokenizer is not None else _local_tokenizer(self.model)

    def prompt(self, request: UserTurnRequest) -> str:
        """The prompt text sent for ``request``: the rendered conversation and the turn's opening."""
        return user_prompt_text(request.intent, request.messages) + USERLM_TURN_OPENING

    def prompt_ids(self, request: UserTurnRequest) -> tuple[str, list[int]] | None:
        """The prompt as the tokenizer renders it, text and token ids, when the tokenizer is at
        hand and the server takes ids exactly (vLLM); else None (the text is sent)."""
        if not self.vllm_like:
            return None
        tok = self._tokenizer
        if tok is None:
            return None
        opening = turn_opening(tok)
        text = user_prompt_string(tok, request.intent, request.messages) + opening.text

        def canonical() -> list[int]:
            return user_prompt_ids(tok, request.intent, request.messages) + opening.ids

        conversation = request.conversation
        return text, conversation.prompt(self.view, text, tok, canonical, request.messages) if conversation else canonical()

    def _first_position(self, logprobs: dict[str, Any] | None, end_id: int | None) -> tuple[float | None, float | None]:
        """P(end) at the first generated position, or (None, an upper bound) when the end token is
        not among the returned log-probabilities, or (None, None) when there are none."""
        top = ((logprobs or {}).get("top_logprobs") or [None])[0]
        if not top:
            return None, None
        keys = {END_OF_CONVERSATION} | ({f"token_id:{end_id}"} if end_id is not None else set())
        for key, value in top.items():
            if key in keys:
                return (math.exp(value) if value is not None and value > float("-inf") else 0.0), None
        bound = math.exp(min(v for v in top.values() if v is not None)) if any(v is not None for v in top.values()) else None
        return None, bound

    def _say_bound(self, bound: float, threshold: float | None) -> None:
        if self._warned_bound:
            return
        self._warned_bound = True
        decided = "" if threshold is None or bound < threshold else (
            f"; --end-threshold {threshold:g} could not be checked on such turns, which go on")
        log.warning("%s: %s was outside the %d log-probabilities the server returned at a turn's start, so P(end) "
                    "is recorded only as below %.3g (end_prob_below)%s. A server that takes logprob_token_ids (vLLM) "
                    "gives it exactly; a larger --max-logprobs narrows the bound.", self.name, END_OF_CONVERSATION,
                    self.max_logprobs, bound, decided)

    async def end_probability(self, prompt: str, seed: int) -> float:
        """P(<|endconversation|>) as the first token of the turn, from the server's logprobs
        (``prompt`` without the turn's opening newline). An end token outside the returned
        top ``max_logprobs`` counts as 0 here and is said once."""
        end_id = await self._end_id()
        extra = self._exact_fields(end_id) if self.vllm_like else {}
        response = await self._complete(prompt=prompt + USERLM_TURN_OPENING, max_tokens=1, logprobs=self.max_logprobs,
                                        temperature=1.0, seed=seed, **extra)
        logprobs = response["choices"][0].get("logprobs")
        if not logprobs or not logprobs.get("top_logprobs"):
            raise ConfigurationError(
                f"{self.base_url} does not return logprobs for {self.model}; --end-threshold needs a server "
                "that does (vLLM does), or drop --end-threshold."
            )
        prob, bound = self._first_position(logprobs, end_id)
        if prob is None and bound is not None:
            self._say_bound(bound, None)
        return prob if prob is not None else 0.0

    def _exact_fields(self, end_id: int | None) -> dict[str, Any]:
        """vLLM's extra completion fields that make the request exact."""
        fields: dict[str, Any] = {"add_special_tokens": False, "skip_special_tokens": False, "return_token_ids": True,
                                  "return_tokens_as_token_ids": True}
        if end_id is not None:
            fields |= {"stop_token_ids": [end_id], "logprob_token_ids": [end_id]}
        return fields

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        end_id = await self._end_id()
        prompt = self.prompt(request)
        end_prob, bound, prompt_tokens = None, None, 0
        threshold = request.ending_threshold
        if threshold is not None and not self.vllm_like:
            # a plain server's log-probabilities may come after the bias: ask for P(end) alone first
            end_prob = await self.end_probability(prompt[: -len(USERLM_TURN_OPENING)], request.seed)
            if end_prob >= threshold:
                return UserDraft(text="", ended=True, end_prob=end_prob)
        suppress_end = not request.end_may_be_sampled
        rendered = self.prompt_ids(request)
        body: dict[str, Any] = {"prompt": prompt if rendered is None else rendered[1], "stop": [END_OF_TURN], "seed": request.seed,
                                **self._sampling_args(request_sampling(request, self))}
        if suppress_end and end_id is not None:
            body["logit_bias"] = {str(end_id): -100}
        if self.vllm_like:
            body |= self._exact_fields(end_id) | {"logprobs": self.max_logprobs}
        response = await self._complete(**body)
        choice = response["choices"][0]
        if self.vllm_like:
            end_prob, bound = self._first_position(choice.get("logprobs"), end_id)
            if end_prob is None and bound is not None:
                self._say_bound(bound, threshold)
        text, turn = self._read(choice.get("text") or "", choice, end_id, end_prob, threshold)
        if rendered is not None and request.conversation is not None and isinstance(choice.get("token_ids"), list):
            self._wrote(request.conversation, *rendered, choice["token_ids"], end_id)
        usage = response.get("usage") or {}
        return UserDraft(
            text="" if turn.ended else text,
            ended=turn.ended,
            end_prob=end_prob,
            prompt_tokens=prompt_tokens + usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            truncated=not turn.ended and choice.get("finish_reason") == "length",
            end_prob_below=bound,
            closed_by_end=turn.closed_by_end,
        )

    def _wrote(self, conversation: ConversationHandle, text: str, prompt: list[int], sampled: list[int], end_id: int | None) -> None:
        """Keep the ids the server sampled (without the stop or end token that closed the turn) in the handle."""
        tok = self._tokenizer
        assert tok is not None  # only prompts sent as ids come here
        stops = {end_id, tok.convert_tokens_to_ids(END_OF_TURN), tok.eos_token_id} - {None}
        turn = list(sampled)
        if turn and turn[-1] in stops:
            turn.pop()
        conversation.wrote(self.view, text, prompt, turn, tok, lambda token: not tok.decode([token]).strip())

    def _read(self, raw: str, choice: dict[str, Any], end_id: int | None, end_prob: float | None,
              threshold: float | None) -> tuple[str, TurnReader]:
        """The turn's text and how it ended, by the rules every engine shares
        (:mod:`userlm.models.turn`), read over the returned text cut into pieces at the end and
        end-of-turn tokens: P(end) at its start decides with a threshold; an end token as the
        whole turn ends the conversation, after some text it closes the turn; nothing after an
        end token is kept."""
        pieces = [piece for piece in _CONTROL.split(raw) if piece]
        if end_id is not None and choice.get("stop_reason") in (end_id, END_OF_CONVERSATION):
            pieces.append(END_OF_CONVERSATION)  # the server stopped on it and left it out of the text
        rules = TurnRules(end=END_OF_CONVERSATION, stops=frozenset({END_OF_TURN}), end_threshold=threshold)
        turn = TurnReader(rules, is_space=lambda piece: not piece.strip())
        if not turn.measure(end_prob):
            turn.read_all(pieces)
        text = "".join(turn.tokens).strip()
        if not (turn.ended or turn.closed_by_end) and not self.vllm_like and not text and choice.get("finish_reason") == "stop":
            # servers that drop special tokens from the text return an end as an empty stopped turn
            turn.ended = True
        return text, turn
