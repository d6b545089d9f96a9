"""``vllm:`` in process and the HTTP path against a real vLLM server, on vLLM's CPU build.

These run in their own environment (``make test-vllm``: vLLM's CPU build pins transformers
below the main environment's), one engine per model for the whole session. Without vLLM they
skip, unless USERLM_REQUIRE_VLLM=1 (CI), where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray_cluster  # the replica test's cluster token, set before vLLM imports Ray
from servers import HANG_S, answers, stop_session, wait_for

pytestmark = pytest.mark.vllm

if os.environ.get("USERLM_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")
else:
    import vllm  # noqa: F401  (fail, do not skip, where vLLM is required)

import userlm
from userlm.guardrails import GuardrailConfig
from userlm.models.base import SamplingSettings, UserTurnRequest
from userlm.models.handle import ConversationHandle
from userlm.simulation import RunSettings

GREEDY = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=12)
ENGINE = dict(dtype="float32", enforce_eager=True, kv_cache_gb=0.25)  # float32: token for token with hf:


def _build(out: Path, texts: list[str], end_weight: float) -> Path:
    """A tiny UserLM-format Llama (head size 32, the least vLLM's CPU attention takes). With
    ``end_weight``, the end token's embedding is that multiple of the turn-opening newline's, so
    P(end) at a turn's first content position is high (~0.5 at 5) and tiny elsewhere: every end
    rule then has something to decide."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from userlm.render import END_OF_CONVERSATION, turn_opening_ids
    from userlm.training.scratch import ModelSize, build_random_model

    path = build_random_model(out, texts, vocab_size=1024, seed=1, size=ModelSize(hidden=128, heads=4, kv_heads=2, intermediate=256))
    if end_weight:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            embeddings = model.get_input_embeddings().weight
            embeddings[tok.convert_tokens_to_ids(END_OF_CONVERSATION)] = end_weight * embeddings[turn_opening_ids(tok)[0]]
        model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory, real_prompts) -> Path:
    from userlm.models.vllm.engine import close_engines

    yield _build(tmp_path_factory.mktemp("vllm") / "user", real_prompts, end_weight=5.0)
    close_engines()  # while the test session's output is still open


@pytest.fixture(scope="session")
def vllm_user(vllm_model_dir):
    from userlm.models.vllm.engine import VLLMOptions, VLLMUserModel

    return VLLMUserModel(str(vllm_model_dir), sampling=GREEDY, options=VLLMOptions(**ENGINE))


@pytest.fixture(scope="session")
def hf_user(vllm_model_dir):
    from userlm.models.hf.local import LoadOptions, LocalUserModel

    return LocalUserModel(str(vllm_model_dir), sampling=GREEDY, options=LoadOptions(device="cpu", dtype="float32", reuse_cache=False))


def _requests(n: int, **fields) -> list[UserTurnRequest]:
    intents = ["You want a vegan lasagna recipe.", "You want to sort a list of dicts in Python.",
               "You plan a cheap trip to Lisbon.", "You need help writing a cover letter."]
    return [UserTurnRequest(intent=intents[i % 4] + f" Case {i}.", messages=[], seed=100 + i, conversation=ConversationHandle(f"c{i}"), **fields)
            for i in range(n)]


def _draft_all(model, requests):
    async def go():
        return await asyncio.gather(*[model.draft(r) for r in requests])

    return asyncio.run(go())


def test_greedy_drafts_equal_the_hf_engine_under_every_guardrail(vllm_user, hf_user):
    """The guard inside vLLM's sampler decides as the hf: engine does, token for token: banned
    first words (only until a word is written), the end token impossible until allowed, the end
    threshold at the first content position; P(end) from vLLM's raw log-probabilities."""
    words = ("I", "The", "Can", "What", "How", "Hi", "Please")
    probs = sorted(d.end_prob for d in _draft_all(hf_user, _requests(12, allow_end=False)))
    # a threshold that some turns reach and some do not, in the widest gap between the middle ones
    k = max(range(3, 8), key=lambda i: probs[i + 1] - probs[i])
    middle = (probs[k] + probs[k + 1]) / 2
    cases = (
        dict(allow_end=True),  # the end token is the argmax at the turns' start: they end
        dict(allow_end=False),  # ... and here cannot
        dict(allow_end=True, banned_first_words=words),
        dict(allow_end=True, end_threshold=middle),
        dict(allow_end=False, end_threshold=0.01, banned_first_words=words),  # a threshold without leave to end is ignored
    )
    for fields in cases:
        requests = _requests(12, **fields)
        ours, theirs = _draft_all(vllm_user, requests), _draft_all(hf_user, requests)
        for a, b in zip(ours, theirs):
            assert (a.text, a.ended) == (b.text, b.ended), fields
            assert a.end_prob == pytest.approx(b.end_prob, abs=2e-4)
            assert (a.truncated, a.closed_by_end) == (b.truncated, b.closed_by_end)
        ended = sum(d.ended for d in ours)
        if not fields["allow_end"]:
            assert ended == 0
        elif "end_threshold" in fields:
            assert 0 < ended < len(ours)
            assert [d.ended for d in ours] == [d.end_prob >= middle for d in ours]
        else:
            assert ended > 0
        if "banned_first_words" in fields:
            assert all(d.text.split()[0].strip(".,!?'\"").casefold() not in {w.casefold() for w in words}
                       for d in ours if d.text.split())


def test_end_threshold_and_banned_words_hold_when_sampling(vllm_user):
    """Sampling at temperature 1: with leave to end and a threshold of 0.3, exactly the turns
    whose P(end) reached 0.3 end; without leave, none does whatever it samples."""
    from userlm.models.vllm.engine import VLLMUserModel

    sampled = VLLMUserModel(vllm_user.engine.path, sampling=SamplingSettings(1.0, 1.0, 8), options=vllm_user_options())
    assert sampled.engine is vllm_user.engine  # one engine per model and settings
    drafts = _draft_all(sampled, _requests(24, allow_end=True, end_threshold=0.3))
    assert [d.ended for d in drafts] == [d.end_prob >= 0.3 for d in drafts]
    assert any(d.ended for d in drafts)
    drafts = _draft_all(sampled, _requests(24, allow_end=False))
    assert not any(d.ended for d in drafts)
    assert all(d.end_prob is not None and 0 < d.end_prob < 1 for d in drafts)


def vllm_user_options():
    from userlm.models.vllm.engine import VLLMOptions

    return VLLMOptions(**ENGINE)


def _simulate(model, assistant, seed: int, out: Path | None = None, n: int = 6):
    user = userlm.SimulatedUser(model, GuardrailConfig(min_turns=2, min_words=1, max_words=None))
    intents = [userlm.Intent(f"i{k}", f"You want help with task number {k}.") for k in range(n)]
    return userlm.simulate(intents, user, assistant, settings=RunSettings(max_turns=3, seed=seed), out=out, progress=False)


def test_a_seed_reproduces_a_run_and_another_seed_does_not(vllm_model_dir):
    """Two runs with the same seed give the same transcripts; the user model and the assistant
    are one engine (the same model in both roles)."""
    from userlm.models.registry import ProviderOptions, chat_model, user_model

    options = ProviderOptions(sampling=SamplingSettings(1.0, 0.9, 10), vllm=vllm_user_options())
    user = user_model(f"vllm:{vllm_model_dir}", options)
    assistant = chat_model(f"vllm:{vllm_model_dir}", options)
    assert user.engine is assistant.engine

    def transcripts(seed):
        return [[m.content for m in c.messages] for c in _simulate(user, assistant, seed).conversations]

    first = transcripts(3)
    assert first == transcripts(3)
    assert first != transcripts(4)
    assert all(len(t) >= 4 for t in first)  # min_turns=2 held: two user turns and replies at least


def test_what_a_seed_guarantees_over_48_conversations(vllm_model_dir):
    """What the README says a seed guarantees on vllm:, over 48 conversations run twice with one seed:
    batches form by timing and vLLM's CPU build promises no batch-invariant sums, so a rare
    conversation may differ; 46 of 48 must come out identical (48 did when this was written)."""
    from userlm.models.registry import ProviderOptions, chat_model, user_model

    options = ProviderOptions(sampling=SamplingSettings(1.0, 0.9, 10), vllm=vllm_user_options())
    user = user_model(f"vllm:{vllm_model_dir}", options)
    assistant = chat_model(f"vllm:{vllm_model_dir}", options)
    runs = [[[m.content for m in c.messages] for c in _simulate(user, assistant, 5, n=48).conversations] for _ in range(2)]
    same = sum(a == b for a, b in zip(*runs))
    firsts = sum(a[0] == b[0] for a, b in zip(*runs))
    assert len(runs[0]) == len(runs[1]) == 48
    assert same >= 46 and firsts >= 46, (same, firsts)


def test_cli_simulate_with_vllm_on_both_sides(vllm_model_dir, tmp_path):
    """The command a user runs; interrupted with SIGINT halfway, it keeps what finished, and
    the same command resumes without redoing it."""
    intents = tmp_path / "intents.jsonl"
    intents.write_text("".join(json.dumps({"id": f"i{k}", "intent": f"You want help with task {k}."}) + "\n" for k in range(8)))
    out = tmp_path / "runs.jsonl"
    command = [sys.executable, "-m", "userlm", "simulate", "--user", f"vllm:{vllm_model_dir}", "--assistant",
               f"vllm:{vllm_model_dir}", "--intents", str(intents), "--out", str(out), "--max-turns", "3",
               "--user-max-tokens", "10", "--assistant-max-tokens", "10", "--vllm-eager", "--vllm-kv-cache-gb", "0.25",
               "--dtype", "float32", "--seed", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"i{k}#0" for k in range(8))
    assert all(r["error"] is None and r["user_model"] == f"vllm:{vllm_model_dir}" for r in records)
    assert all(m["end_prob"] is not None for r in records for m in r["messages"] if m["role"] == "user")
    assert done.stderr.count("note: vllm: is running on the CPU on cores it shares; there hf: is the faster engine") == 1
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0 and "8 already there" in again.stderr + again.stdout


def test_cli_simulate_with_two_vllm_models_places_them_side_by_side(vllm_model_dir, tmp_path):
    """A user and an assistant of different checkpoints: placed side by side on the cores, so the
    note that hf: is faster on shared cores is not printed; the run completes."""
    import shutil

    from userlm.models.vllm.engine import core_shares

    if core_shares(2)[0] is None:
        pytest.skip("needs two cores, and VLLM_CPU_OMP_THREADS_BIND unset")
    assistant_dir = shutil.copytree(vllm_model_dir, tmp_path / "assistant")
    intents = tmp_path / "intents.jsonl"
    intents.write_text("".join(json.dumps({"id": f"i{k}", "intent": f"You want help with task {k}."}) + "\n" for k in range(8)))
    out = tmp_path / "runs.jsonl"
    done = subprocess.run([sys.executable, "-m", "userlm", "simulate", "--user", f"vllm:{vllm_model_dir}", "--assistant",
                           f"vllm:{assistant_dir}", "--intents", str(intents), "--out", str(out), "--max-turns", "2",
                           "--user-max-tokens", "8", "--assistant-max-tokens", "8", "--vllm-eager", "--vllm-kv-cache-gb", "0.25",
                           "--dtype", "float32", "--concurrency", "8"], capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8 and all(r["error"] is None for r in records)
    assert "note: vllm: is running on the CPU" not in done.stderr


def test_two_engines_on_the_cpu_run_side_by_side(vllm_model_dir):
    """As ``userlm simulate`` places a user and an assistant engine on CPUs: each engine's processes
    (its scheduler and its worker, every thread of them) run on its own share of the cores only, and
    each runs at most 3/8 of the conversations at once, unless the user capped it themselves."""
    import psutil

    from userlm.models.vllm.engine import Engine, VLLMOptions, core_shares, side_by_side

    shares = core_shares(2)
    if shares[0] is None:
        pytest.skip("needs two cores, and VLLM_CPU_OMP_THREADS_BIND unset")
    placed = side_by_side(VLLMOptions(**ENGINE), VLLMOptions(**ENGINE), 16)
    assert [o.cpus for o in placed] == shares and [o.max_num_seqs for o in placed] == [6, 6]
    assert [o.max_num_seqs for o in side_by_side(VLLMOptions(max_num_seqs=9), VLLMOptions(), 16)] == [9, 6]
    with pytest.raises(ValueError, match="'first' is not a list of cores"):
        VLLMOptions(cpus="first")
    me = psutil.Process()
    engines, bindings = [], []
    try:
        for options in placed:
            before = {p.pid for p in me.children(recursive=True)}
            engines.append(Engine(str(vllm_model_dir), options))
            started = [p for p in me.children(recursive=True) if p.pid not in before and p.name().startswith("VLLM::")]
            assert {p.name() for p in started} == {"VLLM::EngineCore", "VLLM::Worker"}
            bindings.append({frozenset(os.sched_getaffinity(t.id)) for p in started for t in p.threads()})
        assert [e.llm.vllm_config.scheduler_config.max_num_seqs for e in engines] == [6, 6]
    finally:
        for engine in engines:
            engine.close()
    wanted = [frozenset(int(c) for c in share.split(",")) for share in shares]
    assert bindings[0] == {wanted[0]} and bindings[1] == {wanted[1]}
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ  # set for each engine's start only


# --- vllm: replicas on a Ray cluster -----------------------------------------------------------


def test_vllm_replicas_on_a_ray_cluster_outlive_a_killed_one(vllm_model_dir, tmp_path_factory, tmp_path):
    """Two replica actors, each running a vLLM engine, on a two-node cluster of the test's own;
    one is SIGKILLed while a turn is out at it: every conversation is recorded once, none as an
    error, its turns asked again of the other replica while Ray restarts it."""
    if os.environ.get("USERLM_REQUIRE_VLLM") != "1":
        pytest.importorskip("ray")  # make setup-vllm installs it (and CI requires it)
    from ray.exceptions import RayActorError

    from userlm.models.doubles.scripted import ScriptedAssistant
    from userlm.models.registry import ProviderOptions, user_model
    from userlm.models.vllm.engine import VLLMOptions

    with ray_cluster.local_cluster(tmp_path_factory.mktemp("ray")) as address:
        options = ProviderOptions(sampling=SamplingSettings(1.0, 0.9, 12), vllm=VLLMOptions(**ENGINE), replicas=2, ray=address)
        users = user_model(f"vllm:{vllm_model_dir}", options)
        try:
            victim = users.backends[0].pid()
            intents = [userlm.Intent(f"i{k}", f"You want help with task number {k}.") for k in range(12)]
            user = userlm.SimulatedUser(users, GuardrailConfig(min_turns=3, min_words=1, max_words=None, max_attempts=2))
            out = tmp_path / "runs.jsonl"

            async def run():
                task = asyncio.ensure_future(userlm.simulate_async(
                    intents, user, ScriptedAssistant(["Sure, tell me more.", "Here is a plan."]), out=out, progress=False,
                    settings=RunSettings(max_turns=3, seed=3, concurrency=6)))
                while not task.done() and (not out.exists() or len(out.read_text().splitlines()) < 2 or users.router.load[0] == 0):
                    await asyncio.sleep(0.01)
                os.kill(victim, signal.SIGKILL)
                return await task

            summary = asyncio.run(run())
            records = [json.loads(line) for line in out.read_text().splitlines()]
            assert sorted(r["id"] for r in records) == sorted(f"i{k}#0" for k in range(12))
            assert all(r["error"] is None for r in records) and summary.unfinished == 0 and summary.reasked >= 1

            def restarted() -> bool:  # Ray brought the replica back, its engine loaded, in a new process
                try:
                    return users.backends[0].pid() != victim
                except RayActorError:  # Ray says "the actor is restarting" until it is back
                    return False

            wait_for(restarted, "Ray's restart of the killed vLLM replica")
        finally:
            users.shutdown()


# --- the HTTP path against a real vLLM server -------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(vllm_model_dir, tmp_path_factory):
    """``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 (vLLM's CPU build: the
    ``vllm serve`` script fails on its package metadata; per-request seeds need chunked prefill off)."""

    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(vllm_model_dir), "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--enforce-eager", "--no-enable-chunked-prefill", "--max-logprobs", "20"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/health"), "the vLLM server to answer", process=proc, log=log, every_s=1)
    except AssertionError:
        stop_session(proc)
        raise
    yield {"url": f"{base}/v1", "proc": proc, "log": log}
    stop_session(proc)


def _http_user(url: str, model_dir: Path, sampling=GREEDY, client=None):
    from userlm.models.http.openai_compat import Endpoint, OpenAIUserModel

    return OpenAIUserModel(str(model_dir), endpoint=Endpoint(base_url=url, max_retries=1, timeout_s=60), sampling=sampling,
                           http_client=client)


def _recording_client():
    import httpx

    seen = []

    async def response_hook(response: httpx.Response):
        await response.aread()
        if response.request.url.path.endswith("/completions"):
            seen.append((json.loads(response.request.content), response.json()))

    return httpx.AsyncClient(event_hooks={"response": [response_hook]}), seen


def test_http_prompts_are_token_identical_and_ends_match_the_local_path(vllm_server, vllm_model_dir, vllm_user):
    """Against vLLM's own server: the prompt goes as the local path's token ids (the tokenizer is
    at hand: the served model is a local folder), so message text that spells a control token
    stays text there too; greedy drafts end, close and read P(end) as vllm: does; and the next
    prompt of a conversation carries the ids the server sampled."""
    from userlm.models.handle import ConversationHandle
    from userlm.render import user_prompt_ids, user_prompt_string

    cases = (dict(allow_end=True), dict(allow_end=False), dict(allow_end=True, end_threshold=0.55))
    spelled = [{"role": "user", "content": "what does <|eot_id|> mean"}, {"role": "assistant", "content": "a <|endconversation|> token"}]

    async def run():  # one event loop: the recording client belongs to it
        client, seen = _recording_client()
        http = _http_user(vllm_server["url"], vllm_model_dir, client=client)
        out = []
        for fields in cases:
            requests = _requests(8, **fields)
            out.append((await asyncio.gather(*[http.draft(r) for r in requests]),
                        await asyncio.gather(*[vllm_user.draft(r) for r in requests])))
        control = UserTurnRequest(intent="You want to know about tokens.", messages=spelled, seed=3, allow_end=False)
        both = (await http.draft(control), await vllm_user.draft(control))
        handle = ConversationHandle("kept")
        first = await http.draft(UserTurnRequest(intent="You want a recipe.", messages=[], seed=4, allow_end=False,
                                                 conversation=handle))
        later = [{"role": "user", "content": first.text}, {"role": "assistant", "content": "sure, which one"}]
        await http.draft(UserTurnRequest(intent="You want a recipe.", messages=later, seed=5, allow_end=False, conversation=handle))
        await client.aclose()
        return http, seen, out, both, handle

    http, seen, results, both, handle = asyncio.run(run())
    assert http.vllm_like
    for fields, (ours, local) in zip(cases, results):
        for a, b in zip(ours, local):
            assert (a.text, a.ended) == (b.text, b.ended), fields
            assert a.end_prob == pytest.approx(b.end_prob, abs=2e-4)
        if fields["allow_end"] and "end_threshold" not in fields:
            assert any(d.ended for d in ours)
    assert both[0].text == both[1].text
    tok = vllm_user.engine.tokenizer
    drafts = [(body, answer) for body, answer in seen if body.get("max_tokens") != 1]
    assert drafts
    rendered = {tuple(user_prompt_ids(tok, r.intent, r.messages) + vllm_user.opening)
                for fields in cases for r in _requests(8, **fields)}
    for body, answer in drafts[: 8 * len(cases)]:
        assert isinstance(body["prompt"], list) and answer["choices"][0]["prompt_token_ids"] == body["prompt"]
        assert tuple(body["prompt"]) in rendered
        assert body["add_special_tokens"] is False and body["skip_special_tokens"] is False
    control_body, control_answer = drafts[8 * len(cases)]
    expected = user_prompt_ids(tok, "You want to know about tokens.", spelled) + vllm_user.opening
    assert control_answer["choices"][0]["prompt_token_ids"] == expected
    as_text = tok.encode(user_prompt_string(tok, "You want to know about tokens.", spelled) + "\n", add_special_tokens=False)
    assert as_text != expected  # tokenized as text, the spelled tokens would have become control tokens
    (first_body, first_answer), later_body = drafts[-2], drafts[-1][0]
    sampled = handle.seen[http.view].turns[0]  # the handle holds the ids the server sampled
    assert first_answer["choices"][0]["token_ids"][: len(sampled)] == sampled
    while sampled and not tok.decode(sampled[-1:]).strip():  # a turn is kept without trailing whitespace
        sampled = sampled[:-1]
    assert later_body["prompt"][: len(first_body["prompt"]) + len(sampled)] == first_body["prompt"] + sampled


def test_http_end_outside_the_returned_logprobs_is_a_recorded_bound(vllm_server, vllm_model_dir):
    """A server that ignores logprob_token_ids (simulated by not asking for it) returns only the
    top log-probabilities: P(end) there is recorded as an upper bound, never as zero."""
    http = _http_user(vllm_server["url"], vllm_model_dir, sampling=SamplingSettings(1.0, 1.0, 6))
    asyncio.run(http._end_id())
    http.max_logprobs = 0  # the sampled token's alone: never the end token, which is not allowed here
    http._exact_fields = lambda end_id: {"add_special_tokens": False, "skip_special_tokens": False}
    drafts = _draft_all(http, [UserTurnRequest(intent="You want a recipe.", messages=[
        {"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how can I help"}],
        seed=s, allow_end=False) for s in range(6)])
    bounded = [d for d in drafts if d.end_prob_below is not None]
    assert bounded and all(d.end_prob is None and 0 < d.end_prob_below <= 1 for d in bounded)
    # the bound reaches the record of the turn
    user = userlm.SimulatedUser(http, GuardrailConfig(min_turns=5, min_words=1, max_words=None, max_attempts=1))
    history = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi, how can I help"}]
    messages = [asyncio.run(user.next_turn("You want a recipe.", history, seed=s)).message() for s in range(6)]
    assert any(m.end_prob_below is not None for m in messages)
    assert all(m.end_prob is None for m in messages if m.end_prob_below is not None)


def test_a_vllm_server_that_dies_mid_run_stops_the_run_with_one_sentence(vllm_server, vllm_model_dir, tmp_path):
    """Killed after the first conversations, the server leaves a run that stops with one
    sentence, keeps what finished, and holds few error records rather than one per conversation.
    Every conversation runs its six turns, so most are still to come when the server dies."""
    intents = tmp_path / "intents.jsonl"
    intents.write_text("".join(json.dumps({"id": f"i{k}", "intent": f"You want help with task {k}."}) + "\n" for k in range(60)))
    out = tmp_path / "runs.jsonl"
    command = [sys.executable, "-m", "userlm", "simulate", "--user", f"openai:{vllm_model_dir}", "--user-base-url",
               vllm_server["url"], "--assistant", "python:" + str(Path(__file__).parent / "assistants" / "echo.py") + ":reply",
               "--intents", str(intents), "--out", str(out), "--max-turns", "6", "--user-max-tokens", "8",
               "--max-retries", "1", "--concurrency", "4", "--request-concurrency", "4", "--min-turns", "6"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 3, "three conversations written", process=proc, every_s=0.2)
    os.killpg(vllm_server["proc"].pid, signal.SIGKILL)  # the server's own session: it and its engine, nothing else
    vllm_server["proc"].wait(timeout=HANG_S)
    _, stderr = proc.communicate(timeout=HANG_S)
    assert proc.returncode != 0
    # one sentence says the run stopped: the breaker's error, or (when the last few conversations
    # lost the server one by one) the count of conversations left unrecorded, to redo on a rerun
    said = ("userlm: error:", "were stopped because a server could not be reached")
    lines = [line for line in stderr.strip().splitlines() if any(s in line for s in said) or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in lines[0], stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    finished = [r for r in records if r["error"] is None]
    assert len(finished) >= 3
    assert len(records) - len(finished) <= 4  # the conversations in flight when it died, at most
