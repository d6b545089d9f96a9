"""``userlm serve``, the OpenAI-compatible simulated user that frameworks reach: what it answers, how
it refuses, and requests laid out as tau2-bench's and openevals' user simulators lay them out
(the frameworks' own recipes run in ``tests/test_recipes.py``)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from servers import HANG_S, free_port

from userlm.errors import ConfigurationError
from userlm.guardrails import GuardrailConfig, check_draft
from userlm.integrations.serve import BadRequest, ServeSettings, conversation_of, next_user_turn
from userlm.models.base import UserDraft
from userlm.models.doubles.scripted import ScriptedUser
from userlm.user import SimulatedUser

TOKEN = "test-token"
MARKER = "###STOP###"
INTENT = "You are a user chatting with an assistant to plan a cheap weekend trip to Lisbon."


@pytest.fixture(scope="module")
def server(tiny_user_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "userlm", "serve", "--user", f"hf:{tiny_user_dir}", "--port", str(port),
                                "--api-key", TOKEN, "--stop-marker", MARKER, "--user-max-tokens", "24"],
                               stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    assert "serving the simulated user" in line, line + process.stderr.read()
    yield f"http://127.0.0.1:{port}/v1"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=HANG_S) == 130


def post(server, body, token=TOKEN):
    return httpx.post(f"{server}/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=HANG_S)


def flipped(*agent_and_user):
    """A framework's flipped view: the agent's replies as user messages, the user's turns as assistant ones."""
    return [{"role": "system", "content": INTENT}] + [
        {"role": "user" if k % 2 == 0 else "assistant", "content": text} for k, text in enumerate(agent_and_user)]


def test_the_endpoint_answers_with_guarded_user_turns_and_says_how(server):
    models = httpx.get(f"{server}/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert models["data"][0]["object"] == "model" and models["data"][0]["id"].startswith("hf:")
    answer = post(server, {"model": "userlm", "messages": flipped("Hi! How can I help you today?"), "seed": 5}).json()
    text = answer["choices"][0]["message"]["content"]
    extension = answer["userlm"]
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
    if not extension["ended"]:  # a kept turn passed every guardrail
        assert check_draft(text, ended=False, intent=INTENT, earlier_user_turns=[], config=GuardrailConfig()).accepted
    assert extension["attempts"] == len(extension["refused"]) + (0 if extension["end_reason"] == "guardrail_exhausted" else 1)
    assert all(r["reason"] for r in extension["refused"])
    from userlm.faults import TurnContext, detect

    # the audit field says which faults the turn shows, as the rules find them
    assert extension["faults"] == detect(None if extension["ended"] else text, ended=extension["ended"], context=TurnContext(INTENT))
    again = post(server, {"model": "userlm", "messages": flipped("Hi! How can I help you today?"), "seed": 5}).json()
    assert again["choices"][0]["message"]["content"] == text  # the seed is honoured


def test_concurrent_requests_all_answer(server):
    bodies = [{"model": "userlm", "messages": flipped(f"Hello, visitor number {k}. What do you need?"), "seed": k} for k in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: post(server, b), bodies))
    assert [a.status_code for a in answers] == [200] * 6


def test_concurrent_requests_run_as_batches_in_the_local_engine(tiny_user_dir):
    from aiohttp.test_utils import TestClient, TestServer

    from userlm.integrations.serve import make_app
    from userlm.models.base import SamplingSettings
    from userlm.models.hf.local import LocalUserModel

    user = SimulatedUser(LocalUserModel(str(tiny_user_dir), sampling=SamplingSettings(max_new_tokens=16)))

    async def six_at_once():
        async with TestClient(TestServer(make_app(user))) as client:
            answers = await asyncio.gather(*(client.post("/v1/chat/completions", json={"messages": flipped(f"Hello visitor {k}."), "seed": k})
                                             for k in range(6)))
            return [a.status for a in answers]

    assert asyncio.run(six_at_once()) == [200] * 6
    stats = user.model.stats
    assert stats.rows >= 6 and stats.batches < stats.rows  # drafts of different requests shared batches


@pytest.mark.parametrize("body,status,sentence,param", [
    ({"messages": "hi"}, 400, 'the request needs "messages"', None),
    ({"messages": [{"role": "function", "content": "x"}]}, 400, "role 'function' is not supported", "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "only text content parts are supported", None),
    ({"messages": [], "stream": True}, 400, "stream is not supported", "stream"),
    ({"messages": [], "n": 2}, 400, "n must be 1", "n"),
    ({"messages": [], "seed": "x"}, 400, "seed must be an integer", None),
    ({"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools is not supported", "tools"),
    ({"messages": [], "response_format": {"type": "json_object"}}, 400, "response_format is not supported", "response_format"),
    ({"messages": [], "logprobs": True}, 400, "logprobs is not supported", "logprobs"),
    ({"messages": [], "logit_bias": {"5": -100}}, 400, "logit_bias is not supported", "logit_bias"),
    ({"messages": [], "model": "gpt-4o"}, 404, "The model 'gpt-4o' does not exist here", "model"),
    ({"messages": [], "temperature": 2.5}, 400, "temperature must be a number from 0 to 2", "temperature"),
    ({"messages": [], "top_p": "high"}, 400, "top_p must be a number from 0 to 1", "top_p"),
    ({"messages": [], "max_tokens": 0}, 400, "max_tokens must be a positive integer", "max_tokens"),
    ({"messages": [], "max_completion_tokens": 1.5}, 400, "max_completion_tokens must be a positive integer", "max_completion_tokens"),
    ({"messages": [], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop must be a non-empty string or a list of at most 4", "stop"),
    ({"messages": [], "presence_penalty": 0.5}, 400, "presence_penalty is not supported", "presence_penalty"),
])
def test_bad_requests_get_4xx_in_one_sentence(server, body, status, sentence, param):
    answer = post(server, body)
    error = answer.json()["error"]
    assert answer.status_code == status and sentence in error["message"] and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}  # OpenAI's error shape


def test_every_error_is_openais_json_shape_whatever_its_status(server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    too_big = httpx.post(f"{server}/chat/completions", content=b'{"messages": "' + b"x" * (10 * 2**20) + b'"}', headers=headers,
                         timeout=HANG_S)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    for answer, status in ((httpx.post(f"{server}/completions", json={}, headers=headers, timeout=HANG_S), 404),
                           (httpx.post(f"{server}/responses", json={}, headers=headers, timeout=HANG_S), 404),
                           (httpx.get(f"{server}/chat/completions", headers=headers, timeout=HANG_S), 405)):
        assert answer.status_code == status and answer.headers["content-type"].startswith("application/json")
        assert answer.json()["error"]["message"]


def test_a_conversation_past_the_context_is_a_400_naming_the_code(server):
    long = " ".join(["a long reply that goes on"] * 1500)  # past the tiny model's 2,048 tokens
    answer = post(server, {"model": "userlm", "messages": flipped("Hello, what do you need?", "I need help.", long)})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "context_length_exceeded"


def test_a_requests_sampling_cap_and_stop_sequences_are_honoured(server):
    def ask(name, **extra):
        body = {"model": "userlm", "messages": flipped("Hi! How can I help you today?"), "seed": 3, "conversation_id": name, **extra}
        answer = post(server, body).json()
        return answer, answer["choices"][0]

    capped, choice = ask("capped", max_completion_tokens=3)
    # every draft of the turn (refused ones included) stopped at the cap
    assert capped["usage"]["completion_tokens"] <= 3 * capped["userlm"]["attempts"]
    if not capped["userlm"]["ended"]:
        assert choice["finish_reason"] == "length"
    free, choice = ask("free")
    text = choice["message"]["content"]
    assert free["userlm"]["ended"] is False and len(text) > 6, free
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    _, stopped = ask("stopped", stop=[stop, "never there"])
    assert stopped["message"]["content"] == text[: text.find(stop)] and stopped["finish_reason"] == "stop"
    _, hotter = ask("hotter", temperature=1.9, top_p=1)
    assert hotter["message"]["content"] != text  # the same seed drew other tokens under other settings


def test_a_user_model_that_samples_only_its_own_way_refuses_a_requests_sampling():
    user = SimulatedUser(ScriptedUser(["can you find me a hotel?"]))
    with pytest.raises(BadRequest, match=r"temperature is not supported: the user model .* samples with the server's settings"):
        asyncio.run(next_user_turn(user, {"messages": flipped("Hi"), "temperature": 0.2}, ServeSettings()))
    answer = asyncio.run(next_user_turn(user, {"messages": flipped("Hi"), "stop": "hotel"}, ServeSettings()))
    assert answer["choices"][0]["message"]["content"] == "can you find me a "


def test_tool_messages_are_the_agents_side():
    from userlm.integrations.serve import conversation_of

    intent, turns = conversation_of({"messages": [{"role": "system", "content": "i"}, {"role": "user", "content": "hi, how can I help"},
                                                  {"role": "assistant", "content": "find me a flight"},
                                                  {"role": "tool", "content": "{\"flights\": 2}"}]}, "flipped")
    assert turns == [{"role": "assistant", "content": "hi, how can I help"}, {"role": "user", "content": "find me a flight"},
                     {"role": "assistant", "content": "{\"flights\": 2}"}]


def test_a_missing_token_is_refused(server):
    answer = post(server, {"messages": []}, token="wrong")
    assert answer.status_code == 401 and "bearer token" in answer.json()["error"]["message"]


def test_views_and_the_stop_marker():
    intent, turns = conversation_of({"messages": flipped("Hi!", "need a trip plan", "Sure, when?")}, "flipped")
    assert intent == INTENT and turns == [{"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "need a trip plan"},
                                          {"role": "assistant", "content": "Sure, when?"}]
    plain = [{"role": "system", "content": INTENT}, {"role": "user", "content": "need a trip plan"}]
    assert conversation_of({"messages": plain}, "plain") == (INTENT, plain[1:])
    with pytest.raises(BadRequest, match="n must be 1"):
        conversation_of({"messages": [], "n": 2}, "flipped")
    user = SimulatedUser(ScriptedUser(["can you plan a trip to lisbon for me?"]), GuardrailConfig(min_turns=1))
    settings = ServeSettings(stop_marker=MARKER)
    first = asyncio.run(next_user_turn(user, {"messages": flipped()}, settings))
    assert first["choices"][0]["message"]["content"] == "can you plan a trip to lisbon for me?"
    done = asyncio.run(next_user_turn(user, {"messages": flipped("Hi", "can you plan a trip to lisbon for me?", "Done!")}, settings))
    assert done["choices"][0]["message"]["content"] == MARKER and done["userlm"]["end_reason"] == "user_ended"
    # a turn whose every draft was refused answers with its own marker, never the user's stop
    refused = SimulatedUser(ScriptedUser([["I want a trip."]]), GuardrailConfig(min_turns=1, max_attempts=2))
    gave_up = asyncio.run(next_user_turn(refused, {"messages": flipped("Hi")}, ServeSettings(stop_marker=MARKER,
                                                                                          exhausted_marker="###OUT-OF-SCOPE###")))
    assert gave_up["choices"][0]["message"]["content"] == "###OUT-OF-SCOPE###"
    assert gave_up["userlm"]["end_reason"] == "guardrail_exhausted" and gave_up["userlm"]["ended"]
    with pytest.raises(ConfigurationError, match="--exhausted-marker"):
        ServeSettings(stop_marker=MARKER, exhausted_marker=MARKER)
    # the cap on the turn: a turn its token budget cut says so
    cut = SimulatedUser(Truncating(), GuardrailConfig(min_turns=1, max_words=None))
    assert asyncio.run(next_user_turn(cut, {"messages": flipped("Hi")}, settings))["choices"][0]["finish_reason"] == "length"


class Truncating:
    name = "truncating"

    async def draft(self, request):
        return UserDraft(text="please plan a long trip to lisbon and then porto and then", truncated=True)


def test_a_served_conversation_is_keyed_on_what_the_client_sends_never_on_the_seed():
    """Engines keep a conversation's cache and route its turns by its key: the id the client
    names, else the conversation's own beginning; two conversations never share one because they
    share a seed, and one conversation keeps one key from its second request on."""
    keys: list[str | None] = []

    class Recording:
        name = "recording"

        async def draft(self, request):
            keys.append(request.conversation_key)
            return UserDraft(text=f"tell me more about option number {len(request.messages)}")

    user = SimulatedUser(Recording(), GuardrailConfig(min_turns=1))
    settings = ServeSettings()

    def ask(body, header=None):
        asyncio.run(next_user_turn(user, body, settings, header))
        return keys[-1]

    assert ask({"messages": flipped()}, header="run-7/conv-1") == "client:run-7/conv-1"
    assert ask({"messages": flipped(), "conversation_id": "c2"}) == "client:c2"
    assert ask({"messages": flipped(), "metadata": {"conversation_id": "c3"}}) == "client:c3"
    second = ask({"messages": flipped("Hi", "need a trip plan", "Sure, when?"), "seed": 1})
    third = ask({"messages": flipped("Hi", "need a trip plan", "Sure, when?", "in May", "Where to?"), "seed": 1})
    other = ask({"messages": flipped("Hi", "looking for a cheap flight", "Sure, from where?"), "seed": 1})
    assert second == third and other != second and second.startswith("prefix:")
    with pytest.raises(BadRequest, match="conversation_id must be a non-empty string"):
        ask({"messages": flipped(), "conversation_id": 5})


TAU2_SYSTEM = """# User Simulation Guidelines
You are playing the role of a customer contacting a customer service representative.

<scenario>
You want to return the water bottle you ordered last week and get a refund to your card.
</scenario>"""


def test_requests_laid_out_as_tau2_benchs_user_simulator_lays_them_out():
    """tau2-bench's user simulator sends its guidelines with the task's <scenario> as the system
    message and the conversation with roles flipped (the agent's greeting as ``user``), through
    LiteLLM's OpenAI provider; it reads ###STOP### as the user's stop and ###OUT-OF-SCOPE### as an
    aborted run (checked first), and sends ``tools`` only in domains that give the user tools."""
    settings = ServeSettings(stop_marker="###STOP###", exhausted_marker="###OUT-OF-SCOPE###")
    greeting = [{"role": "system", "content": TAU2_SYSTEM}, {"role": "user", "content": "Hi! How can I help you today?"}]
    user = SimulatedUser(ScriptedUser(["hey, can you help me return a water bottle?"]), GuardrailConfig(min_turns=1))
    answer = asyncio.run(next_user_turn(user, {"model": "userlm", "messages": greeting}, settings))
    assert answer["choices"][0]["message"]["content"] == "hey, can you help me return a water bottle?"
    later = greeting + [{"role": "assistant", "content": "hey, can you help me return a water bottle?"},
                        {"role": "user", "content": "Sure, what is your order id?"}]
    ended = asyncio.run(next_user_turn(user, {"model": "userlm", "messages": later}, settings))
    assert ended["choices"][0]["message"]["content"] == "###STOP###" and ended["userlm"]["end_reason"] == "user_ended"
    refused = SimulatedUser(ScriptedUser([["I want a refund."]]), GuardrailConfig(min_turns=1, max_attempts=2))
    aborted = asyncio.run(next_user_turn(refused, {"model": "userlm", "messages": greeting}, settings))
    content = aborted["choices"][0]["message"]["content"]
    assert content == "###OUT-OF-SCOPE###" and "###STOP###" not in content and aborted["userlm"]["end_reason"] == "guardrail_exhausted"
    with pytest.raises(BadRequest, match="tools is not supported"):  # the telecom domain's user tools
        asyncio.run(next_user_turn(user, {"messages": greeting, "tools": [{"type": "function", "function": {"name": "toggle_airplane_mode"}}]},
                                   settings))


def test_openevals_request_to_open_the_conversation_is_read_as_no_message():
    opener = "Generate an initial query to start a conversation based on your instructions. Do not respond with other text."
    intent, turns = conversation_of({"messages": [{"role": "system", "content": INTENT}, {"role": "user", "content": opener}]}, "flipped")
    assert intent == INTENT and turns == []
    # anywhere else it is what the agent said
    _, later = conversation_of({"messages": flipped("Hi", "plan a trip", opener)}, "flipped")
    assert later[-1] == {"role": "assistant", "content": opener}
