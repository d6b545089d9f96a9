"""Small models from scratch: a byte-level BPE tokenizer carrying the UserLM special tokens and
chat template, and a small randomly initialised Llama-architecture model.

Used for offline demos and tests, and as the start of a small user model trained on real
user turns (``userlm train --from-scratch``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..render import ASSISTANT_CHAT_TEMPLATE, END_OF_CONVERSATION, END_OF_TURN, USERLM_CHAT_TEMPLATE, USERLM_SPECIAL_TOKENS

if TYPE_CHECKING:  # pragma: no cover
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 2048, chat_template: str = USERLM_CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with the UserLM special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(USERLM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|begin_of_text|>",
        eos_token=END_OF_TURN,
        pad_token=END_OF_TURN,
        additional_special_tokens=[t for t in USERLM_SPECIAL_TOKENS if t not in ("<|begin_of_text|>", END_OF_TURN)],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@dataclass(frozen=True)
class ModelSize:
    """Shape of a small Llama-architecture model."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 172
    max_positions: int = 2048


def init_model(tokenizer: PreTrainedTokenizerFast, size: ModelSize = ModelSize(), seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture causal LM sized for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(END_OF_TURN)],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # the sampling shown on the UserLM-8b model card, so servers that follow the checkpoint's
    # generation config (transformers serve) sample as userlm does
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = config.eos_token_id, tokenizer.pad_token_id
    gen.do_sample, gen.temperature, gen.top_p = True, 1.0, 0.8
    return model


def save_model(model, tokenizer, out: str | Path) -> Path:
    """Save model and tokenizer together, loadable as ``hf:<out>``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_random_model(
    out: str | Path,
    texts: Iterable[str],
    *,
    role: str = "user",
    vocab_size: int = 2048,
    size: ModelSize = ModelSize(),
    seed: int = 0,
) -> Path:
    """Tokenizer trained on ``texts`` plus a random model, saved as a ``hf:`` directory.

    ``role="user"`` gives the UserLM chat template; ``role="assistant"`` an instruct template.
    """
    template = USERLM_CHAT_TEMPLATE if role == "user" else ASSISTANT_CHAT_TEMPLATE
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, chat_template=template)
    return save_model(init_model(tokenizer, size, seed), tokenizer, out)


__all__ = ["ASSISTANT_CHAT_TEMPLATE", "END_OF_CONVERSATION", "ModelSize", "build_random_model", "init_model", "save_model", "train_tokenizer"]
