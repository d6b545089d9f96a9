"""The lean Llama forward used for batched sampling: held to the model's own forward."""

from __future__ import annotations

import pytest
import torch

from userlm.models import lean
from userlm.models.lean import LeanBatch, lean_model

VOCAB = 96


def tiny(kind: str):
    """A tiny randomly initialised model of the given architecture (float32)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}))
    elif kind == "qwen2":  # biases on the query/key/value projections
        model = Qwen2ForCausalLM(Qwen2Config(**shape, use_sliding_window=False))
    elif kind == "mistral-window":
        model = MistralForCausalLM(MistralConfig(**shape, sliding_window=16))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2))
    return model.eval()


def own_last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_lean_logits_equal_the_models_own(kind, monkeypatch):
    monkeypatch.setattr(lean, "_QUERY_BLOCK", 3)  # long prompts attend in blocks: exercise the seams
    monkeypatch.setattr(lean, "_SCORES", 100)  # and past this many scores, masks are made block by block
    model = tiny(kind)
    fast = lean_model(model)
    assert fast is not None
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (5, 11, 8, 10)]
    cuts = (4, 3, 2, 4)
    batch = LeanBatch(fast, len(prompts), capacity=20)
    # a first part of every prompt, then the rest after it (as a next turn after a cached one); the
    # rest of rows 1 and 2 (8 and 6 new tokens after 3 and 2 cached) attend together, padded
    batch.prefill(0, [p[:n] for p, n in zip(prompts, cuts)])
    logits = torch.cat([batch.prefill(0, [p[n:] for p, n in zip(prompts[:3], cuts)]), batch.prefill(3, [prompts[3][cuts[3]:]])])
    for row, prompt in enumerate(prompts):
        torch.testing.assert_close(logits[row], own_last_logits(model, prompt), rtol=1e-4, atol=1e-4)

    fed = [list(p) for p in prompts]
    for step, active in enumerate(([True] * 4, [True, False, True, False], [True] * 4)):
        tokens = torch.tensor([7 + step, 30 + step, 60 + step, 80 + step])
        logits = batch.step(tokens, torch.tensor(active))
        for row, prompt in enumerate(fed):
            if active[row]:
                torch.testing.assert_close(logits[row], own_last_logits(model, prompt + [int(tokens[row])]), rtol=1e-4, atol=1e-4)
                prompt.append(int(tokens[row]))  # an inactive row's token is not kept

    # what a row keeps, loaded into another batch, continues exactly the same
    length, layers = batch.kept(1)
    assert length == len(fed[1])
    other = LeanBatch(fast, 1, capacity=length + 2)
    other.load(0, layers, length)
    logits = other.prefill(0, [[5]])
    torch.testing.assert_close(logits[0], own_last_logits(model, fed[1] + [5]), rtol=1e-4, atol=1e-4)


def test_fused_weights_leave_the_models_own_forward_unchanged():
    model = tiny("llama")
    ids = list(range(1, 12))
    before = own_last_logits(model, ids)
    parameters = sum(p.numel() for p in model.parameters())
    lean_model(model)
    assert lean_model(model) is lean_model(model)  # fused once
    torch.testing.assert_close(own_last_logits(model, ids), before, rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == parameters
    layer = model.model.layers[0].self_attn
    assert layer.q_proj.weight.untyped_storage().data_ptr() == layer.v_proj.weight.untyped_storage().data_ptr()


@pytest.mark.parametrize("kind", ["mistral-window", "gpt2"])
def test_other_architectures_keep_the_models_own_forward(kind):
    assert lean_model(tiny(kind)) is None


def greedy_engine(user_dir, max_new_tokens: int):
    """The tiny user model's tokenizer and model, and the engine's greedy settings for it."""
    from userlm.models.base import SamplingSettings
    from userlm.models.vocab import vocab_tables
    from userlm.models.local import LoadOptions, LocalUserModel

    user = LocalUserModel(str(user_dir), sampling=SamplingSettings(0.0, 1.0, max_new_tokens), options=LoadOptions(dtype="float32"))
    tok = user.loaded.tokenizer
    settings = dict(stop_ids=user.stop_ids, end_id=user.end_id, pad_id=user.loaded.pad_id,
                    whitespace=vocab_tables(tok).whitespace, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    return tok, user.loaded.model, settings


def test_sampling_with_and_without_the_lean_forward_agrees(tiny_user_dir):
    """Two turns of several conversations, the second from the prefix cache: the same greedy
    tokens through the lean forward and the model's own."""
    from userlm.models.engine import EngineStats, PrefixCache, Row, generate

    tok, model, common = greedy_engine(tiny_user_dir, 8)
    intents = ["You want lasagna.", "Plan a cheap trip to Lisbon with two friends.", "Sort a list."]
    firsts = [tok.encode(f"<|start_header_id|>system<|end_header_id|>\n{t}<|eot_id|>", add_special_tokens=False) for t in intents]
    follow = tok.encode("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\nSure, tell me more.<|eot_id|>",
                        add_special_tokens=False)
    outcomes = []
    for use_lean in (True, False):
        cache, stats = PrefixCache(), EngineStats()
        one = generate(model, [Row(p, 0, key=str(i)) for i, p in enumerate(firsts)], prefix_cache=cache, stats=stats,
                       lean=use_lean, **common)
        second = [p + r.tokens + follow for p, r in zip(firsts, one)]
        two = generate(model, [Row(p, 0, key=str(i)) for i, p in enumerate(second)], prefix_cache=cache, stats=stats,
                       lean=use_lean, **common)
        assert stats.reused_tokens >= sum(len(p) for p in firsts)
        outcomes.append([r.tokens for r in one + two])
    assert outcomes[0] == outcomes[1]
    assert any(outcomes[0])


def test_kept_views_are_copied_out_once_their_batch_moves_on(tiny_user_dir):
    """A batch's conversations keep views of its buffers; once a later batch goes on without
    one of them, that one is copied out, the old buffers go back to the model's pool for the
    batch after, and the copied conversation still reuses exactly."""
    from userlm.models.engine import EngineStats, PrefixCache, Row, generate

    tok, model, common = greedy_engine(tiny_user_dir, 6)
    first = {key: tok.encode(f"<|start_header_id|>system<|end_header_id|>\n{text}<|eot_id|>", add_special_tokens=False)
             for key, text in (("a", "You want lasagna."), ("b", "You want a cheap trip to Lisbon."))}
    cache = PrefixCache()
    turn = dict(zip(first, generate(model, [Row(p, 0, key=k) for k, p in first.items()], prefix_cache=cache, **common)))
    entries = cache._entries
    assert entries["a"].batch is not None and entries["a"].batch is entries["b"].batch
    follow = tok.encode("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\nSure.<|eot_id|>", add_special_tokens=False)
    nxt = {k: first[k] + turn[k].tokens + follow for k in first}
    first_batch = entries["a"].batch
    buffers = first_batch.storage
    generate(model, [Row(nxt["a"], 0, key="a")], prefix_cache=cache, **common)
    assert entries["b"].batch is None and entries["a"].batch is not None
    # nothing views the first batch now: its buffers went back to the model, and the next batch
    # takes them, zeroed (stale values past a row's length must not reach the sums)
    assert first_batch.storage is None and any(kept is buffers for kept in lean_model(model).buffers._free)
    with torch.inference_mode():
        for flat in buffers:
            flat.fill_(float("nan"))
    stats = EngineStats()
    reused = generate(model, [Row(nxt["b"], 0, key="b")], prefix_cache=cache, stats=stats, **common)
    assert entries["b"].batch.storage is buffers
    assert stats.reused_tokens >= len(first["b"])
    assert [r.tokens for r in reused] == [r.tokens for r in generate(model, [Row(nxt["b"], 0)], **common)]


def test_batches_without_a_prefix_cache_reuse_the_models_buffers(tiny_user_dir, monkeypatch):
    """Every batch of a model, in this run or a later one, starts from buffers an earlier batch
    gave back when they are large enough (memory touched again costs no page faults)."""
    from userlm.models.engine import Row, generate

    tok, model, common = greedy_engine(tiny_user_dir, 6)
    prompt = tok.encode("<|start_header_id|>system<|end_header_id|>\nYou want lasagna.<|eot_id|>", add_special_tokens=False)
    made = []
    original = LeanBatch.__init__

    def record(self, *args):
        original(self, *args)
        made.append(self.storage)

    monkeypatch.setattr(LeanBatch, "__init__", record)
    first = generate(model, [Row(prompt, 0), Row(prompt[:-2], 1)], **common)
    again = generate(model, [Row(prompt, 0), Row(prompt[:-2], 1)], **common)
    generate(model, [Row(prompt * 12, seed) for seed in range(3)], **common)  # over three times the first batch
    assert [r.tokens for r in first] == [r.tokens for r in again]
    assert made[1] is made[0] and made[2] is not made[0]  # the same tensors, not an address malloc gave again


def test_the_buffer_pool_keeps_the_latest_sets_and_gives_the_latest_that_fits():
    from userlm.models.lean import BufferPool

    pool = BufferPool(keep=2)
    small, large, larger = ([torch.empty(n)] for n in (10, 100, 1000))
    for storage in (small, large, larger):
        pool.give(storage)
    assert len(pool) == 2  # the oldest went
    assert pool.take(50) is larger and pool.take(500) is None and pool.take(50) is large and pool.take(1) is None


def test_a_model_with_fused_weights_is_still_freed():
    import gc
    import weakref

    model = tiny("llama")
    alive = weakref.ref(model)
    assert lean_model(model) is not None
    del model
    gc.collect()
    assert alive() is None
