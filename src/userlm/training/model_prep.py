"""Make any causal LM checkpoint ready to be trained as a UserLM-format user model.

Adds the UserLM special tokens it lacks (``<|endconversation|>`` above all), sets the UserLM chat
template, resizes the embeddings and initialises each new row as the mean of the existing rows
(no random noise, so the new token starts as an average, unremarkable token), and records the
end-of-turn token as an end-of-sequence id.
"""

from __future__ import annotations

from pathlib import Path

from ..render import END_OF_TURN, USERLM_CHAT_TEMPLATE, USERLM_SPECIAL_TOKENS


def prepare_tokenizer(tokenizer) -> list[str]:
    """Add missing UserLM special tokens and set the template; returns the tokens added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in USERLM_SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    tokenizer.chat_template = USERLM_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = END_OF_TURN
    return missing


def resize_with_mean_rows(model, new_size: int) -> None:
    """Resize input (and untied output) embeddings; new rows are the mean of the old ones."""
    import torch

    old_size = model.get_input_embeddings().weight.shape[0]
    if new_size <= old_size:
        return
    model.resize_token_embeddings(new_size, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            weight = layer.weight
            weight[old_size:] = weight[:old_size].mean(dim=0, keepdim=True)


def prepare_model(model, tokenizer) -> list[str]:
    """Prepare tokenizer and model together; returns the tokens added."""
    added = prepare_tokenizer(tokenizer)
    resize_with_mean_rows(model, len(tokenizer))
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    model.generation_config.eos_token_id = sorted(set(eos) | {eot})
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return added


def load_base(base: str, *, dtype: str = "auto", trust_remote_code: bool = False):
    """Tokenizer and model of a base checkpoint (local directory or hub id), prepared."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..errors import UserError

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load base model {base} ({str(exc).strip().splitlines()[0]}); give a local directory or a downloaded hub id.") from None
    prepare_model(model, tokenizer)
    return model, tokenizer


def save_together(model, tokenizer, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
