"""Replicas on a real Ray cluster on 127.0.0.1 (a head and a second node, started by the test),
sticky routing, a replica killed mid-run, and several OpenAI-compatible servers as one model."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter

import pytest
from ray_cluster import local_cluster  # sets the cluster's token before Ray is imported
from servers import HANG_S, stop_session, wait_for

ray = pytest.importorskip("ray")

import userlm
from userlm.guardrails import GuardrailConfig
from userlm.models.base import SamplingSettings
from userlm.models.registry import ProviderOptions, chat_model, user_model
from userlm.models.scale.replicas import Replicated, Router
from userlm.simulation import RunSettings

pytestmark = pytest.mark.ray

SAMPLING = SamplingSettings(temperature=1.0, top_p=0.9, max_new_tokens=8)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node on 127.0.0.1, each with 2 CPUs (see :func:`ray_cluster.local_cluster`)."""
    with local_cluster(tmp_path_factory.mktemp("ray")) as address:
        yield address


def _options(side: str, address: str, replicas: int = 2) -> ProviderOptions:
    return ProviderOptions(sampling=SAMPLING, replicas=replicas, ray=address, side=side)


def _intents(n: int) -> list[userlm.Intent]:
    return [userlm.Intent(f"i{k}", f"You want help with task number {k}.") for k in range(n)]


def _user(model) -> userlm.SimulatedUser:
    return userlm.SimulatedUser(model, GuardrailConfig(min_turns=3, min_words=1, max_words=None, max_attempts=2))


def test_two_replicas_on_two_nodes_give_the_one_engine_run(cluster, tiny_user_dir, tiny_assistant_dir, tmp_path):
    """The same conversations (ids, count, turns) as one engine in this process; every replica
    served some; each conversation's user turns stayed on one replica."""
    users = user_model(f"hf:{tiny_user_dir}", _options("user", cluster))
    assistants = chat_model(f"hf:{tiny_assistant_dir}", _options("assistant", cluster))
    assert isinstance(users, Replicated) and len(users.backends) == 2
    assert len({b.pid() for b in users.backends}) == 2  # two processes, placed where the cluster has room
    intents = _intents(12)
    spread = userlm.simulate(intents, _user(users), assistants, settings=RunSettings(max_turns=3, seed=7),
                             out=tmp_path / "spread.jsonl", progress=False)
    one = userlm.simulate(intents, _user(user_model(f"hf:{tiny_user_dir}", ProviderOptions(sampling=SAMPLING))),
                          chat_model(f"hf:{tiny_assistant_dir}", ProviderOptions(sampling=SAMPLING)),
                          settings=RunSettings(max_turns=3, seed=7), progress=False)
    assert [c.id for c in spread.conversations] == [c.id for c in one.conversations]
    assert all(c.error is None for c in spread.conversations)
    assert [len(c.messages) for c in spread.conversations] == [len(c.messages) for c in one.conversations]
    assert spread.conversations[0].user_model == one.conversations[0].user_model  # records name the model, not the pool
    assert all(load == 0 for load in users.router.load)
    homes = Counter(users.router.homes.values())
    assert len(homes) == 2  # both replicas served conversations
    users.shutdown()
    assistants.shutdown()


def test_a_killed_replica_loses_and_duplicates_nothing(cluster, tiny_user_dir, tiny_assistant_dir, tmp_path):
    """SIGKILL to a replica's process mid-run: its turns in flight are asked again elsewhere, Ray
    restarts it, and the output holds every conversation once."""
    users = user_model(f"hf:{tiny_user_dir}", _options("user", cluster))
    assistants = chat_model(f"hf:{tiny_assistant_dir}", ProviderOptions(sampling=SAMPLING))  # in this process
    victim = users.backends[0].pid()
    out = tmp_path / "runs.jsonl"
    intents = _intents(24)

    async def run():
        task = asyncio.ensure_future(userlm.simulate_async(intents, _user(users), assistants, out=out, progress=False,
                                                           settings=RunSettings(max_turns=4, seed=1, concurrency=8)))
        while (not out.exists() or len(out.read_text().splitlines()) < 2) and not task.done():
            await asyncio.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        return await task

    summary = asyncio.run(run())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert sorted(ids) == sorted(f"i{k}#0" for k in range(24)) and len(set(ids)) == len(ids)
    assert all(r["error"] is None for r in records)
    assert summary.reasked >= 1
    def restarted() -> bool:  # Ray brought the replica back, in a new process
        try:
            return users.backends[0].pid() != victim
        except ray.exceptions.RayActorError:
            return False

    wait_for(restarted, "Ray to restart the killed replica", every_s=0.5)
    users.shutdown()


def test_every_replica_killed_at_once_burns_no_conversation(cluster, tiny_user_dir, tiny_assistant_dir, tmp_path):
    """SIGKILL to every replica mid-run: turns wait for Ray's restart and go on, and no conversation
    is recorded as an error; with a wait shorter than a restart, the run stops, those
    conversations are left unrecorded, and the same run finishes them once the replicas are back."""
    from dataclasses import replace

    from userlm.models.scale.replicas import ReplicaPlacement

    def pool(wait_s: float):
        return user_model(f"hf:{tiny_user_dir}", replace(_options("user", cluster), placement=ReplicaPlacement(restart_wait_s=wait_s)))

    assistants = chat_model(f"hf:{tiny_assistant_dir}", ProviderOptions(sampling=SAMPLING))
    intents = _intents(16)

    def run_killing_all(users, out):
        victims = [b.pid() for b in users.backends]

        async def run():
            task = asyncio.ensure_future(userlm.simulate_async(intents, _user(users), assistants, out=out, progress=False,
                                                               settings=RunSettings(max_turns=3, seed=2, concurrency=8)))
            # Kill while a user turn is out at a replica (Ray holds calls made during a restart until
            # the replica is back; only calls under way fail), after two conversations are recorded.
            while not task.done() and (not out.exists() or len(out.read_text().splitlines()) < 2 or sum(users.router.load) == 0):
                await asyncio.sleep(0.01)
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            return await task

        return asyncio.run(run())

    patient = pool(600.0)
    out = tmp_path / "patient.jsonl"
    summary = run_killing_all(patient, out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(f"i{k}#0" for k in range(16))
    assert all(r["error"] is None for r in records) and summary.unfinished == 0 and summary.reasked >= 1
    patient.shutdown()

    hasty = pool(0.0)
    out = tmp_path / "hasty.jsonl"
    summary = run_killing_all(hasty, out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.unfinished >= 1 and len(records) + summary.unfinished == 16 and all(r["error"] is None for r in records)
    assert "stayed down for over 0 s" in summary.first_unfinished
    hasty.shutdown()
    back = pool(600.0)
    again = userlm.simulate(intents, _user(back), assistants, out=out, progress=False, settings=RunSettings(max_turns=3, seed=2, concurrency=8))
    back.shutdown()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert again.written == summary.unfinished and sorted(r["id"] for r in records) == sorted(f"i{k}#0" for k in range(16))


def test_a_replica_that_cannot_load_or_dies_loading_is_one_sentence_naming_its_node(cluster):
    """A node without the model at the spec's path, and a replica killed while it loads (as the
    kernel's out-of-memory killer does): one sentence each, naming the node; nothing left running."""
    from userlm.errors import UserError
    from userlm.models.scale.replicas import connect, ray_replicas

    connect(cluster)
    before = _live_actors()
    nodes = {(n["NodeManagerAddress"], n["NodeID"][:8]) for n in ray.nodes() if n["Alive"]}
    with pytest.raises(UserError, match=r"hf:/nowhere/userlm-model: the replica on node (\S+) \(Ray node ([0-9a-f]{8})\) could "
                                        r"not load its model \(/nowhere/userlm-model: no such model folder; check the path\); every "
                                        r"node a replica may run on needs what loading it needs there: the model at the spec's path") as failed:
        user_model("hf:/nowhere/userlm-model", _options("user", cluster))
    assert _named_node(failed.value) in nodes

    def killed_while_loading():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(UserError, match=r"hf:big: the replica on node \S+ \(Ray node [0-9a-f]{8}\) died while loading its "
                                        r"model \(killed, or out of memory there\)") as failed:
        ray_replicas("hf:big", killed_while_loading, 2, cluster)
    assert _named_node(failed.value) in nodes
    # the four replicas were stopped for good: none is left alive or coming back
    wait_for(lambda: _live_actors() == before, HANG_S)


def _named_node(error: Exception) -> tuple[str, str]:
    import re

    found = re.search(r"on node (\S+) \(Ray node ([0-9a-f]{8})\)", str(error))
    assert found, error
    return found.group(1), found.group(2)


def _live_actors() -> int:
    """Actors the cluster holds alive, restarting or being created (Ray's GCS, read directly: the
    test's cluster runs no dashboard for the state API)."""
    from ray._private.state import actors

    return sum(1 for a in actors().values() if a.get("State") in ("ALIVE", "RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY"))


def test_cli_with_replicas_on_the_cluster(cluster, tiny_user_dir, tiny_assistant_dir, tmp_path):
    intents = tmp_path / "intents.jsonl"
    intents.write_text("".join(json.dumps({"id": f"i{k}", "intent": f"You want help with task {k}."}) + "\n" for k in range(6)))
    out = tmp_path / "runs.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "userlm", "simulate", "--user", f"hf:{tiny_user_dir}", "--assistant", f"hf:{tiny_assistant_dir}",
         "--user-replicas", "2", "--ray", cluster, "--intents", str(intents), "--out", str(out), "--max-turns", "2",
         "--user-max-tokens", "8", "--assistant-max-tokens", "8", "--no-progress"],
        capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(out.read_text().splitlines()) == 6
    # The same command with another token: one sentence naming --ray and what to set, nothing written.
    again = subprocess.run(
        [sys.executable, "-m", "userlm", "simulate", "--user", f"hf:{tiny_user_dir}", "--assistant", f"hf:{tiny_assistant_dir}",
         "--user-replicas", "2", "--ray", cluster, "--intents", str(intents), "--out", str(tmp_path / "refused.jsonl"),
         "--no-progress"], capture_output=True, text=True, timeout=HANG_S,
        env=os.environ | {"RAY_AUTH_TOKEN": secrets.token_hex(32)})
    assert again.returncode != 0
    assert f"--ray {cluster}: the cluster refused this process's token" in again.stderr
    assert "Traceback" not in again.stderr
    assert not (tmp_path / "refused.jsonl").exists()


def test_replicas_need_a_cluster_and_a_local_engine(tiny_user_dir):
    with pytest.raises(userlm.UserError, match="needs a Ray cluster: add --ray auto"):
        user_model(f"hf:{tiny_user_dir}", ProviderOptions(replicas=2))
    with pytest.raises(userlm.UserError, match="--assistant-replicas applies to hf: and vllm:"):
        chat_model("openai:m", ProviderOptions(replicas=2, ray="auto", side="assistant"))


def test_router_is_sticky_and_balances_new_conversations():
    router = Router(3)
    first = [router.pick(f"c{k}") for k in range(3)]
    for k, r in enumerate(first):
        router.load[r] += 1
        router.settle(f"c{k}", r)
    assert sorted(first) == [0, 0, 0]  # nothing in flight anywhere: the first replica, for each
    router.load = [5, 0, 2]
    assert router.pick("new") == 1  # least loaded
    assert router.pick("c0") == 0  # sticky, whatever the load
    assert router.pick("c0", avoid={0}) == 1  # its replica failed: elsewhere
    router.forget("c0")
    assert router.pick("c0") == 1


def test_several_servers_as_one_model(tiny_user_dir, tmp_path):
    """--user-base-url URL,URL: two real OpenAI-compatible servers serve one user model, each
    conversation staying on one server; a server that goes away is routed around."""
    from dataclasses import replace

    from servers import transformers_serve

    from userlm.models.http.openai_compat import Endpoint

    servers = [transformers_serve(tmp_path / f"serve{k}.log") for k in range(2)]
    try:
        options = ProviderOptions(sampling=SAMPLING, side="user")
        pool = user_model(f"openai:{tiny_user_dir}", replace(options, endpoint=Endpoint(
            base_url=",".join(url for _, url in servers), max_retries=0, timeout_s=60), end_token_id=4))
        assert isinstance(pool, Replicated) and len(pool.backends) == 2
        run = userlm.simulate(_intents(6), _user(pool), userlm.load_assistant(lambda m: "Sure, tell me more."),
                              settings=RunSettings(max_turns=2, concurrency=6), progress=False)
        assert all(c.error is None for c in run.conversations)
        assert set(pool.router.homes.values()) == {0, 1}
    finally:
        for proc, _ in servers:
            stop_session(proc)


def test_eval_user_scoring_through_replicas_equals_the_local_model(cluster, tiny_user_dir, shared_data):
    """eval-user's perplexity and P(end) points, each replica scoring its share of the real
    held-out conversations, equal the local model's, in the conversations' order."""
    from userlm.evaluation.simulators.parts import Simulator, UserEvalSettings, alignment_part
    from userlm.prepare.ingest import conversations_from

    convs = list(conversations_from(str(shared_data("oasst/en_100_tree.jsonl"))))[:10]
    settings = UserEvalSettings(resamples=50)
    users = user_model(f"hf:{tiny_user_dir}", _options("user", cluster))
    try:
        spread = asyncio.run(alignment_part(Simulator("spread", users), convs, settings))
    finally:
        users.shutdown()
    local = asyncio.run(alignment_part(Simulator("local", user_model(f"hf:{tiny_user_dir}", ProviderOptions())), convs, settings))
    assert spread["format"] == local["format"] == "userlm"
    for key in ("ppl_no_intent_per_conversation",):
        assert [r["id"] for r in spread[key]] == [r["id"] for r in local[key]]
        assert [r["nll"] for r in spread[key]] == pytest.approx([r["nll"] for r in local[key]], rel=1e-4)
    assert [(p["conversation"], p["after_reply"]) for p in spread["end_points"]] == \
        [(p["conversation"], p["after_reply"]) for p in local["end_points"]]
