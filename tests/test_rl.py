"""The guarded simulated user as the environment of RL training, in the real libraries: verifiers'
``MultiTurnEnv`` (rollouts against a policy behind ``transformers serve``), SkyRL-Gym's
``BaseTextEnv``, and TRL's ``GRPOTrainer`` training a tiny policy for two steps on the CPU."""

from __future__ import annotations

import os
import re
import threading

import pytest
from servers import stop_session, transformers_serve

from userlm.errors import UserError
from userlm.evaluation.assistants.tasks import load_suite
from userlm.guardrails import GuardrailConfig, check_draft
from userlm.integrations.environment import shared_user, task_reward


def letters(text: str) -> str:
    return re.sub(r"[^a-zA-Z]+", "", text)


def accepted(text: str, earlier: list[str], intent: str) -> bool:
    return check_draft(text, ended=False, intent=intent, earlier_user_turns=earlier, config=GuardrailConfig()).accepted


@pytest.fixture(scope="module")
def gsm8k():
    return {t.id: t for t in load_suite("gsm8k")}


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory):
    proc, url = transformers_serve(tmp_path_factory.mktemp("policy") / "serve.log")
    yield url
    stop_session(proc)


def test_a_tasks_scorer_is_a_reward_on_the_policys_last_answer_attempt(gsm8k):
    reward = task_reward(gsm8k["gsm8k-1"])  # its answer is 18
    assert reward(["Let me think: 20?", "She makes $18 a day."]) == 1.0
    assert reward(["18", "No wait, it is 20."]) == 0.0
    assert reward(["Which eggs do you mean?"]) == 0.0 and reward([]) == 0.0


def test_verifiers_rollouts_answer_the_policy_with_the_guarded_user(tiny_user_dir, tiny_assistant_dir, policy_server, gsm8k, monkeypatch):
    import verifiers as vf
    from verifiers.types import ClientConfig

    from userlm.integrations.verifiers import load_environment

    monkeypatch.setenv("POLICY_KEY", "none")
    client = ClientConfig(api_base_url=policy_server, api_key_var="POLICY_KEY", max_retries=0, timeout=300)
    env = load_environment(f"hf:{tiny_user_dir}", tasks="gsm8k", limit=2, max_turns=2)
    assert isinstance(env, vf.MultiTurnEnv)
    out = env.evaluate_sync(client, str(tiny_assistant_dir), sampling_args={"max_tokens": 12}, num_examples=2, rollouts_per_example=2)
    outputs = out["outputs"]
    assert len(outputs) == 4 and not any(o["error"] for o in outputs)
    for o in outputs:
        task = gsm8k[list(gsm8k)[o["example_id"]]]
        [opening] = [m["content"] if isinstance(m, dict) else m.content for m in o["prompt"]]
        completion = [(m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content) for m in o["completion"]]
        users = [opening] + [text for role, text in completion if role == "user"]
        replies = [text for role, text in completion if role == "assistant"]
        assert task.text not in opening  # the policy never sees the intent, only what the user says
        assert all(accepted(text, users[:k], task.intent) for k, text in enumerate(users))
        assert [role for role, _ in completion] == ["assistant", "user"] * (len(users) - 1) + ["assistant"]
        assert o["metrics"]["user_turns"] == len(users) <= 2
        assert o["metrics"]["task_score"] == o["reward"] == task_reward(task)(replies)
    # the scorer hook: any function of the episode is the reward
    scored = load_environment(f"hf:{tiny_user_dir}", intents=["You want a vegan lasagna recipe that takes under an hour."],
                              scorer=lambda episode: float(len(episode.replies())), max_turns=3)
    [o] = scored.evaluate_sync(client, str(tiny_assistant_dir), sampling_args={"max_tokens": 8}, num_examples=1)["outputs"]
    assert o["reward"] == sum(1 for m in o["completion"] if (m["role"] if isinstance(m, dict) else m.role) == "assistant") >= 1


def test_skyrl_gym_makes_the_registered_environment_and_steps_it(tiny_user_dir, gsm8k):
    import skyrl_gym

    import userlm.integrations.skyrl  # noqa: F401  (registers "userlm")

    config = {"user": f"hf:{tiny_user_dir}", "max_turns": 3}
    env = skyrl_gym.make("userlm", env_config=config, extras={"task": {"suite": "gsm8k", "id": "gsm8k-1"}})
    observations, info = env.init([{"role": "system", "content": "You are a helpful assistant."}])
    assert [m["role"] for m in observations] == ["system", "user"] and not info["ended"]
    users, actions = [observations[1]["content"]], ["How many eggs does she eat?", "So she makes $18 every day."]
    steps = [env.step(action) for action in actions]
    assert [s["done"] for s in steps] == [False, False] and [s["reward"] for s in steps] == [0.0, 0.0]
    users.append(steps[0]["observations"][0]["content"])
    users.append(steps[1]["observations"][0]["content"])
    intent = gsm8k["gsm8k-1"].intent
    assert all(accepted(text, users[:k], intent) for k, text in enumerate(users))
    last = env.step("The answer is 18.")  # the user's turn limit: the episode ends and the task's scorer gives the reward
    assert last["done"] and last["observations"] == [] and last["reward"] == 1.0 and last["metadata"]["end_reason"] == "max_turns"
    assert env.get_metrics() == {"user_turns": 3, "user_ended": 0.0}
    with pytest.raises(UserError, match=r'needs extras\["intent"\]'):
        skyrl_gym.make("userlm", env_config=config, extras={})


def test_many_environments_share_one_engine_and_their_turns_run_as_batches(tiny_user_dir):
    import skyrl_gym

    import userlm.integrations.skyrl  # noqa: F401

    config = {"user": f"hf:{tiny_user_dir}", "max_turns": 2}
    envs = [skyrl_gym.make("userlm", env_config=config, extras={"intent": f"You want help with chore number {k}."}) for k in range(8)]
    stats = shared_user(f"hf:{tiny_user_dir}").user.model.stats
    rows, batches = stats.rows, stats.batches
    barrier = threading.Barrier(len(envs))

    def play(env):
        env.init([])
        barrier.wait()
        return env.step("Sure, tell me more.")

    threads = [threading.Thread(target=play, args=(env,)) for env in envs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.rows - rows >= 16 and stats.batches - batches < stats.rows - rows  # drafts of different environments shared batches


def test_trl_grpo_trains_two_steps_with_the_users_tokens_masked(tiny_user_dir, tiny_assistant_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from userlm.integrations.trl import UserRollout

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    calls = []

    class Recorded(UserRollout):
        def __call__(self, prompts, trainer):
            out = super().__call__(prompts, trainer)
            calls.append((out, list(self.episodes)))
            return out

    # a reward that differs between rollouts, so that the policy's gradient is not zero
    rollout = Recorded(f"hf:{tiny_user_dir}", tasks="gsm8k", limit=4, max_turns=2, reply_tokens=10,
                       scorer=lambda episode: float(len(" ".join(episode.replies())) % 5))
    tok = AutoTokenizer.from_pretrained(tiny_assistant_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_assistant_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=2, max_completion_length=160,
                      use_cpu=True, report_to=[], logging_steps=1, learning_rate=1e-2, save_strategy="no", bf16=False, seed=0)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=rollout.reward, train_dataset=rollout.dataset(),
                          rollout_func=rollout, args=args)
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2 and len(calls) == 2
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
    for (out, episodes), logged in zip(calls, steps):
        for ids, mask, episode in zip(out["completion_ids"], out["env_mask"], episodes):
            assert len(ids) == len(mask) <= 160 and mask[0] == 1
            # every policy reply ends its turn: with the stop token it sampled, or (cut by the cap) the template's, masked
            ends = {tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id}
            assert all(ids[i - 1] in ends or (ids[i] in ends and not mask[i]) for i in range(1, len(ids)) if mask[i - 1] and not mask[i])
            policy = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
            user = tok.decode([t for t, m in zip(ids, mask) if not m], skip_special_tokens=True)
            later_turns = [m["content"] for m in episode.messages if m["role"] == "user"][1:]
            # (decoded apart, the random tokens' stray bytes differ: compare their letters)
            assert all(letters(text) in letters(user) for text in later_turns)
            assert not any(letters(text) in letters(policy) for text in later_turns if len(letters(text)) > 8)
        # TRL counted the policy's tokens alone: the user's were masked out of the completion
        assert logged["completions/mean_length"] == pytest.approx(sum(sum(m) for m in out["env_mask"]) / len(out["env_mask"]))
