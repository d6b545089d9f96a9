"""OpenAI-compatible servers: a real one (``transformers serve`` on 127.0.0.1) for the user path
(completions with logit_bias) and the assistant path (chat), and retry behaviour."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from servers import free_port, stop_session, transformers_serve

import userlm
from userlm.errors import ConfigurationError
from userlm.guardrails import GuardrailConfig
from userlm.intents import Intent
from userlm.models.base import SamplingSettings
from userlm.models.doubles.scripted import ScriptedUser
from userlm.models.http.openai_compat import Endpoint, OpenAIChatModel, OpenAIUserModel
from userlm.simulation import RunSettings

SAMPLING = SamplingSettings(temperature=1.0, top_p=0.8, max_new_tokens=12)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``transformers serve`` on 127.0.0.1, serving the tiny models by path."""
    proc, url = transformers_serve(tmp_path_factory.mktemp("serve") / "serve.log")
    yield url
    stop_session(proc)


def recording_client():
    bodies = []

    async def hook(request: httpx.Request):
        bodies.append((request.url.path, json.loads(request.content or b"{}")))

    return httpx.AsyncClient(event_hooks={"request": [hook]}), bodies


def test_user_and_assistant_over_a_real_openai_compatible_server(server, tiny_user_dir, tiny_assistant_dir, tiny_tokenizer):
    end_id = tiny_tokenizer.convert_tokens_to_ids("<|endconversation|>")
    http, bodies = recording_client()
    endpoint = Endpoint(base_url=server, max_retries=1, timeout_s=60)
    user_model = OpenAIUserModel(str(tiny_user_dir), endpoint=endpoint, sampling=SAMPLING, end_token_id=end_id, http_client=http)
    assistant = OpenAIChatModel(str(tiny_assistant_dir), endpoint=endpoint, sampling=SAMPLING, http_client=http)
    user = userlm.SimulatedUser(user_model, GuardrailConfig(min_words=1, max_words=None))
    intents = [Intent("a", "You want a vegan lasagna recipe."), Intent("b", "You want to plan a trip to Lisbon.")]
    runs = userlm.simulate(intents, user, assistant, settings=RunSettings(max_turns=2), progress=False)

    for conv in runs.conversations:
        assert conv.error is None, conv.error
        assert conv.end_reason == "max_turns"
        assert [m.role for m in conv.messages] == ["user", "assistant"] * 2
        assert conv.usage["user"].prompt_tokens > 0 and conv.usage["assistant"].prompt_tokens > 0

    completions = [b for path, b in bodies if path.endswith("/completions") and "prompt" in b]
    chats = [b for path, b in bodies if path.endswith("/chat/completions")]
    assert completions and chats
    for body in completions:
        assert body["prompt"].startswith("<|start_header_id|>system<|end_header_id|>\nYou want")
        assert body["prompt"].endswith("<|start_header_id|>user<|end_header_id|>\n")  # the turn opened, as on the local path
        assert body["stop"] == ["<|eot_id|>"]
        assert body["logit_bias"] == {str(end_id): -100}
        assert body["top_p"] == 0.8
    second_turn = [b for b in chats if len(b["messages"]) == 3]
    assert second_turn and [m["role"] for m in second_turn[0]["messages"]] == ["user", "assistant", "user"]


def test_end_threshold_needs_logprobs_and_says_so(server, tiny_user_dir):
    endpoint = Endpoint(base_url=server, max_retries=0)
    model = OpenAIUserModel(str(tiny_user_dir), endpoint=endpoint, sampling=SAMPLING, end_token_id=4)
    user = userlm.SimulatedUser(model, GuardrailConfig(end_threshold=0.5, min_turns=0))
    with pytest.raises(ConfigurationError, match="does not return logprobs"):
        userlm.simulate(["You want lasagna."], user, userlm.load_assistant(lambda m: "ok"), progress=False)


def test_termination_over_http_falls_back_to_sampled_drafts(server, tiny_user_dir, shared_data):
    """A server without log-probabilities: eval-user's termination asks for the next turn
    ``end_samples`` times at every point, and P(end) is the share of drafts that ended."""
    from userlm.evaluation.simulators.parts import Simulator, UserEvalSettings, termination_part
    from userlm.prepare.ingest import conversations_from

    convs = list(conversations_from(str(shared_data("oasst/en_100_tree.jsonl"))))[:3]
    model = OpenAIUserModel(str(tiny_user_dir), endpoint=Endpoint(base_url=server, max_retries=0), sampling=SAMPLING, end_token_id=4)
    result = asyncio.run(termination_part(Simulator("http", model), convs, {}, UserEvalSettings(end_samples=2, resamples=50)))
    points = result["points"]
    assert len(points) == sum(len(c.messages) // 2 for c in convs)
    assert all(p["prob"] in (0.0, 0.5, 1.0) for p in points)
    assert sum(p["ended"] for p in points) == 3
    assert "sampled drafts" in result["end_f1"]["how"]


def test_a_server_that_is_down_aborts_with_one_sentence():
    endpoint = Endpoint(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    assistant = OpenAIChatModel("m", endpoint=endpoint, sampling=SAMPLING)
    with pytest.raises(ConfigurationError, match=r"cannot reach .* is the server running"):
        asyncio.run(assistant.reply([{"role": "user", "content": "hi"}]))


CHAT_OK = {
    "id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hello"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def mock_assistant(responses, max_retries=3):
    calls = []

    def handler(request):
        calls.append(request)
        status, headers = responses[min(len(calls) - 1, len(responses) - 1)]
        return httpx.Response(status, headers=headers, json=CHAT_OK if status == 200 else {"error": {"message": "busy"}})

    endpoint = Endpoint(base_url="http://mock.test/v1", max_retries=max_retries)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIChatModel("m", endpoint=endpoint, sampling=SAMPLING, http_client=http), calls


def test_rate_limits_are_retried_honouring_retry_after():
    model, calls = mock_assistant([(429, {"retry-after": "1"}), (503, {}), (200, {})])
    started = time.perf_counter()
    reply = asyncio.run(model.reply([{"role": "user", "content": "hi"}]))
    assert reply.text == "hello" and reply.prompt_tokens == 3
    assert len(calls) == 3
    assert time.perf_counter() - started >= 1.0  # waited as the server asked


def test_retries_are_bounded_and_the_failure_is_recorded():
    model, calls = mock_assistant([(500, {"retry-after": "0"})], max_retries=2)
    user = userlm.SimulatedUser(ScriptedUser(["got a recipe for me?"]))
    conv = userlm.simulate(["You want lasagna."], user, model, progress=False).conversations[0]
    assert len(calls) == 3  # --max-retries 2: three attempts in all
    assert conv.end_reason == "assistant_error" and "ServerError: HTTP 500" in conv.error and "gave up after 3 attempts" in conv.error


def test_a_refused_key_aborts_the_run():
    model, _ = mock_assistant([(401, {})])
    with pytest.raises(ConfigurationError, match="refused the API key"):
        asyncio.run(model.reply([{"role": "user", "content": "hi"}]))
