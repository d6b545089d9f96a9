"""Training: packed flipped samples, model preparation, and the recipe end to end on real
Open-Assistant conversations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from userlm.conversation import Conversation, Message
from userlm.render import END_OF_CONVERSATION, ControlText, target_spans, user_prompt_ids
from userlm.training.samples import IGNORE, PackStats, pack

CONV = Conversation(
    id="c", intent_id="c", intent="You are a user chatting with an assistant to get a vegan lasagna recipe.",
    messages=[
        Message(role="user", content="got a vegan lasagna recipe?"),
        Message(role="assistant", content="Sure! Do you want it gluten-free as well?"),
        Message(role="user", content="no, just quick, under an hour"),
        Message(role="assistant", content="Here is one that takes 50 minutes: layer noodles, tofu ricotta and sauce."),
        Message(role="user", content="what can I use instead of tofu"),
        Message(role="assistant", content="Cashew ricotta works well."),
    ],
)


@pytest.fixture(scope="module")
def tiny_lm(tiny_user_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_user_dir).eval(), AutoTokenizer.from_pretrained(tiny_user_dir)


def test_packed_loss_equals_the_k_plus_1_sample_loss(tiny_lm):
    model, tok = tiny_lm
    row = pack(tok, CONV)
    ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
    with torch.no_grad():
        packed = model(input_ids=ids, labels=labels).loss

    # the K+1-sample formulation: each target alone, after exactly the prompt simulation uses
    chat = [m.chat() for m in CONV.messages] + [{"role": "user", "content": ControlText(END_OF_CONVERSATION)}]
    total, count = 0.0, 0
    header = len(tok.encode("<|start_header_id|>user<|end_header_id|>", add_special_tokens=False))
    user_positions = [i for i, m in enumerate(chat) if m["role"] == "user"]
    assert len(user_positions) == 4  # K = 3 user turns, plus the end
    for i in user_positions:
        prompt = user_prompt_ids(tok, CONV.intent, chat[:i])
        upto = user_prompt_ids(tok, CONV.intent, chat[: i + 1])
        target = upto[len(prompt) : len(upto) - header]  # minus the user turn opened after it
        sample = torch.tensor([prompt + target])
        sample_labels = torch.tensor([[IGNORE] * len(prompt) + target])
        n = len(target)
        with torch.no_grad():
            total += float(model(input_ids=sample, labels=sample_labels).loss) * n
        count += n
    assert count == sum(1 for x in row["labels"] if x != IGNORE)
    assert float(packed) == pytest.approx(total / count, rel=1e-5)


def test_only_user_turns_and_the_end_carry_loss(tiny_lm):
    _, tok = tiny_lm
    row = pack(tok, CONV)
    trained = tok.decode([t for t in row["labels"] if t != IGNORE])
    assert trained == ("\ngot a vegan lasagna recipe?<|eot_id|>\nno, just quick, under an hour<|eot_id|>"
                       "\nwhat can I use instead of tofu<|eot_id|>\n<|endconversation|><|eot_id|>")
    untrained = tok.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label == IGNORE])
    assert CONV.intent in untrained and "Cashew ricotta" in untrained and "got a vegan" not in untrained
    # the no-intent variant drops the system message
    assert CONV.intent not in tok.decode(pack(tok, CONV, use_intent=False)["input_ids"])


def test_long_conversations_keep_only_whole_targets_with_whole_context(tiny_lm):
    _, tok = tiny_lm
    full = pack(tok, CONV)
    spans = target_spans([x != IGNORE for x in full["labels"]])
    cut = spans[2][1] - 1  # the third target would be cut in half
    stats = PackStats()
    row = pack(tok, CONV, max_length=cut, stats=stats)
    assert row["input_ids"] == full["input_ids"][: spans[1][1]]
    assert target_spans([x != IGNORE for x in row["labels"]]) == spans[:2]
    assert (stats.targets, stats.dropped_targets) == (2, 2)
    assert pack(tok, CONV, max_length=spans[0][0], stats=stats) is None and stats.dropped_conversations == 1


def test_model_preparation_adds_the_end_token_with_a_mean_initialised_row(tmp_path, real_prompts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from userlm.training.model_prep import load_base, save_together

    core = Tokenizer(models.BPE())
    core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    core.train_from_iterator(real_prompts, trainers.BpeTrainer(vocab_size=600, special_tokens=["</s>"], show_progress=False))
    base_tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>")
    base = LlamaForCausalLM(LlamaConfig(vocab_size=len(base_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    save_together(base, base_tok, tmp_path / "base")
    old_in = base.get_input_embeddings().weight.detach().clone()

    model, tok = load_base(str(tmp_path / "base"))
    end = tok.convert_tokens_to_ids(END_OF_CONVERSATION)
    assert end >= len(base_tok) and tok.chat_template.startswith("{% for message in messages %}")
    for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
        assert layer.weight.shape[0] == len(tok)
    new_rows = model.get_input_embeddings().weight[len(base_tok):]
    assert torch.allclose(new_rows, old_in.mean(0).expand_as(new_rows), atol=1e-6)
    assert torch.equal(model.get_input_embeddings().weight[: len(base_tok)], old_in)
    assert tok.convert_tokens_to_ids("<|eot_id|>") in model.generation_config.eos_token_id


def userlm_cli(*args):
    return subprocess.run([sys.executable, "-m", "userlm", *map(str, args)], capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # two minutes of training; the demo's test runs the same path in brief
def test_prepare_train_simulate_on_real_open_assistant_threads(tmp_path, shared_data):
    """The proof: a small model trained for a short while on CPU predicts held-out real user
    turns far better than untrained, and the directory runs in userlm simulate as it is."""
    prepared, model_dir = tmp_path / "prepared", tmp_path / "model"
    done = userlm_cli("prepare", shared_data("oasst/en_100_tree.jsonl"), "--out", prepared)
    assert done.returncode == 0, done.stderr
    report = json.loads((prepared / "report.json").read_text())
    assert report["splits"]["train"] > 300 and report["splits"]["validation"] > 20

    done = userlm_cli("train", "--data", prepared, "--out", model_dir, "--from-scratch", "tiny", "--no-intent",
                      "--max-length", 1024, "--epochs", 1, "--per-device-batch-size", 8, "--effective-batch-size", 8,
                      "--vocab-size", 2048)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    before, after = metrics["validation_user_turn_perplexity_before"], metrics["validation_user_turn_perplexity_after"]
    print(f"validation user-turn perplexity: untrained {before:.1f}, trained {after:.1f}")
    assert after < before / 3
    assert (model_dir / "userlm_train_config.yaml").exists()
    # one bar: the losses ride on it rather than a printed line per log, and every one is kept
    assert "'loss'" not in done.stdout + done.stderr and "'eval_loss'" not in done.stdout + done.stderr
    assert "Writing model shards" not in done.stderr
    assert any("loss" in e for e in metrics["log_history"]) and any("eval_loss" in e for e in metrics["log_history"])

    intents = tmp_path / "intents.jsonl"
    intents.write_text('{"id": "a", "intent": null}\n{"id": "b", "intent": null}\n')
    replies = tmp_path / "replies.txt"
    replies.write_text("Could you say more?\n")
    runs = tmp_path / "runs.jsonl"
    done = userlm_cli("simulate", "--intents", intents, "--user", f"hf:{model_dir}", "--assistant", f"scripted:{replies}",
                      "--out", runs, "--max-turns", 2, "--min-words", 1)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in runs.read_text().splitlines()]
    assert len(records) == 2 and all(r["messages"] or r["final_turn"] for r in records)


def test_lora_training_with_intents_resumes_and_loads_in_simulate(tmp_path, tiny_user_dir):
    import yaml

    from userlm.conversation import write_conversations
    from userlm.training.train import TrainConfig, train

    data = tmp_path / "data"
    convs = [CONV.model_copy(update={"id": f"c{i}"}) for i in range(16)]
    write_conversations(data / "train.jsonl", convs)
    write_conversations(data / "validation.jsonl", convs[:2])
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump({"data": str(data), "out": str(tmp_path / "lora"), "base": str(tiny_user_dir),
                                           "lora": True, "max_steps": 2, "per_device_batch_size": 4, "effective_batch_size": 4,
                                           "learning_rate": 1e-3}))
    config = TrainConfig.from_yaml(str(config_file))
    metrics = train(config)
    assert metrics["optimizer_steps"] == 2
    config.max_steps, config.resume = 4, True
    metrics = train(config)
    assert metrics["optimizer_steps"] == 4
    assert any(e.get("step") == 4 for e in metrics["log_history"])
    stored = yaml.safe_load((tmp_path / "lora" / "userlm_train_config.yaml").read_text())
    assert stored["lora"] is True and stored["max_steps"] == 4

    import userlm

    user = userlm.load_user(f"hf:{tmp_path / 'lora'}", userlm.GuardrailConfig(min_words=1, max_words=None))
    conv = userlm.simulate([CONV.intent], user, userlm.load_assistant(lambda m: "ok, what else?"),
                           settings=userlm.RunSettings(max_turns=1), progress=False).conversations[0]
    assert conv.error is None


def test_resuming_a_model_with_tied_embeddings_ties_them_again_without_a_missing_key_warning(tmp_path):
    """A from-scratch model ties its output embeddings to its input ones, so its checkpoints hold
    the matrix once; resuming must tie them again, not warn that lm_head.weight is missing."""
    import logging

    from transformers import AutoModelForCausalLM

    from userlm.conversation import write_conversations
    from userlm.training.train import TrainConfig, train

    data = tmp_path / "data"
    convs = [CONV.model_copy(update={"id": f"c{i}"}) for i in range(8)]
    write_conversations(data / "train.jsonl", convs)
    write_conversations(data / "validation.jsonl", convs[:2])
    config = TrainConfig(data=str(data), out=str(tmp_path / "m"), from_scratch="tiny", vocab_size=300, max_length=256,
                         max_steps=2, save_steps=2, per_device_batch_size=4, effective_batch_size=4)
    train(config)
    warned: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())  # type: ignore[method-assign]
    trainer_log = logging.getLogger("transformers.trainer")
    trainer_log.addHandler(handler)
    try:
        config.max_steps, config.resume = 4, True
        assert train(config)["optimizer_steps"] == 4
    finally:
        trainer_log.removeHandler(handler)
    assert not [m for m in warned if "missing keys" in m], warned
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_bad_training_config_is_one_sentence(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nlearning_rat: 0.1\n")
    done = userlm_cli("train", "--config", bad)
    assert done.returncode == 2 and "unknown setting(s) learning_rat" in done.stderr and "Traceback" not in done.stderr
    done = userlm_cli("train", "--data", tmp_path, "--out", tmp_path / "o", "--from-scratch", "tiny")
    assert done.returncode == 2 and "train.jsonl: no such file; run userlm prepare first" in done.stderr
