"""``userlm train``: fine-tune (or train from scratch) a user model with the UserLM recipe.

    userlm train --data prepared/ --base meta-llama/Llama-3.2-1B --out models/my-userlm
    userlm train --config train.yaml

Reads the prepared splits (``train.jsonl``, ``validation.jsonl``), packs each conversation into
one sequence whose loss falls only on the user's turns and the end of the conversation, and
trains with the transformers ``Trainer`` (full fine-tuning, or LoRA through peft, merged at the
end). The result is a directory that ``userlm simulate --user hf:DIR`` loads as it is.

Defaults follow the paper: max length 2048, learning rate 2e-5, cosine schedule, effective batch
1024 sequences. Small runs scale the batch down so that an epoch still has at least 32 optimizer
steps (effective batch = min(1024, train conversations / 32)); from-scratch models default to a
learning rate of 1e-3, since 2e-5 barely moves random weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..conversation import read_conversations
from ..errors import UserError
from ..files import write_text

SCRATCH_SIZES = {
    "tiny": dict(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=344),
    "small": dict(hidden=256, layers=6, heads=8, kv_heads=4, intermediate=688),
    "base": dict(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1376),
}


@dataclass
class TrainConfig:
    """Everything ``userlm train`` does; also readable from a YAML file."""

    data: str = ""  #: folder with train.jsonl and validation.jsonl (from userlm prepare/intents)
    out: str = ""  #: where the trained model goes
    base: str | None = None  #: base checkpoint (local directory or hub id)
    from_scratch: str | None = None  #: or a size in SCRATCH_SIZES: new tokenizer and random model
    vocab_size: int = 4096  #: from-scratch tokenizer size
    use_intent: bool = True  #: False trains the paper's no-intent variant
    max_length: int = 2048
    learning_rate: float | None = None  #: None: 2e-5, or 1e-3 from scratch
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    max_steps: int = -1
    effective_batch_size: int | None = None  #: None: min(1024, train conversations / 32)
    per_device_batch_size: int = 4
    gradient_checkpointing: bool = False
    bf16: str = "auto"  #: "auto" (on GPUs that support it), "true", "false"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    eval_steps: int | None = None  #: None: evaluate about 10 times a run
    save_steps: int | None = None  #: None: same as eval_steps
    logging_steps: int = 10
    seed: int = 0
    resume: bool = False  #: go on from the last checkpoint in out/checkpoints
    trust_remote_code: bool = False
    extra: dict = field(default_factory=dict)  #: further TrainingArguments, passed as they are

    @classmethod
    def from_yaml(cls, path: str) -> TrainConfig:
        import yaml

        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file.") from None
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({exc}).") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{path}: unknown setting(s) {', '.join(unknown)}; valid ones are {', '.join(sorted(known))}.")
        return cls(**values)

    def validate(self) -> None:
        if not self.data or not self.out:
            raise UserError("give --data (a prepared folder) and --out (where the model goes).")
        if (self.base is None) == (self.from_scratch is None):
            raise UserError("give exactly one of --base CHECKPOINT or --from-scratch SIZE.")
        if self.from_scratch is not None and self.from_scratch not in SCRATCH_SIZES:
            raise UserError(f"unknown --from-scratch size {self.from_scratch!r}; use one of {', '.join(SCRATCH_SIZES)}.")


def _split(data: Path, name: str, required: bool):
    path = data / f"{name}.jsonl"
    if not path.exists():
        if required:
            raise UserError(f"{path}: no such file; run userlm prepare first (it writes train/validation/test.jsonl).")
        return []
    return read_conversations(path)


def _scratch_model(config: TrainConfig, train_convs):
    from .scratch import ModelSize, init_model, train_tokenizer

    texts = [m.content for c in train_convs for m in c.messages] + [c.intent for c in train_convs if c.intent]
    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size)
    assert config.from_scratch is not None  # only called when training from scratch
    size = ModelSize(**SCRATCH_SIZES[config.from_scratch], max_positions=config.max_length)
    return init_model(tokenizer, size, seed=config.seed), tokenizer


def _tied_on_resume(model: Any) -> None:
    """A model whose output embeddings are its input embeddings stores that matrix once, so its
    checkpoints lack the output side (``lm_head.weight``). Told that this key is left out on
    purpose, the Trainer ties the two again when it resumes, instead of warning that the key is
    missing (which reads like a broken checkpoint)."""
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is None or inputs is None or output.weight is not inputs.weight:
        return
    name = next(n for n, module in model.named_modules() if module is output)
    model._keys_to_ignore_on_save = [f"{name}.weight"]


def train(config: TrainConfig) -> dict:
    """Train and save; returns the metrics written to ``out/metrics.json``."""
    config.validate()
    data, out = Path(config.data), Path(config.out)
    train_convs, valid_convs = _conversations(config, data)
    model, tokenizer = _starting_model(config, train_convs)
    train_rows, valid_rows, packed = _sequences(config, tokenizer, train_convs, valid_convs, data)
    plan = _Schedule.of(config, len(train_rows))
    model = _trainable(config, model)
    before = _perplexity(config, model, tokenizer, valid_convs)
    trainer = _trainer(config, plan, model, tokenizer, train_rows, valid_rows, out)
    _run(trainer, resume=config.resume and any((out / "checkpoints").glob("checkpoint-*")))
    model = _final_model(config, trainer, model, plan.bf16)
    after = _perplexity(config, model, tokenizer, valid_convs)
    metrics = {
        "train_conversations": len(train_convs),
        "train_sequences": len(train_rows),
        "train_targets": packed.targets,
        "dropped_targets": packed.dropped_targets,
        "effective_batch_size": plan.effective_batch_size,
        "learning_rate": plan.learning_rate,
        "optimizer_steps": trainer.state.global_step,
        "validation_user_turn_perplexity_before": before.perplexity if before else None,
        "validation_user_turn_perplexity_after": after.perplexity if after else None,
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():  # one writer when several processes train together
        _save(config, model, tokenizer, metrics, out)
    return metrics


def _conversations(config: TrainConfig, data: Path):
    """The prepared training and validation conversations (validation may be absent)."""
    train_convs = _split(data, "train", True)
    valid_convs = _split(data, "validation", False)
    if config.use_intent and train_convs and all(c.intent is None for c in train_convs):
        raise UserError(f"{data}/train.jsonl has no intents; run userlm intents first, or train the no-intent variant with --no-intent.")
    return train_convs, valid_convs


def _starting_model(config: TrainConfig, train_convs):
    """The model and tokenizer training starts from: the base model, or a new small one."""
    if config.from_scratch:
        return _scratch_model(config, train_convs)
    from .model_prep import load_base

    assert config.base is not None  # validate() requires a base model when not training from scratch
    return load_base(config.base, trust_remote_code=config.trust_remote_code)


def _sequences(config: TrainConfig, tokenizer, train_convs, valid_convs, data: Path):
    """The packed training and validation sequences, and what packing kept and dropped."""
    from .samples import pack_all

    train_rows, packed = pack_all(tokenizer, train_convs, use_intent=config.use_intent, max_length=config.max_length)
    valid_rows, _ = pack_all(tokenizer, valid_convs, use_intent=config.use_intent, max_length=config.max_length)
    if not train_rows:
        raise UserError(f"{data}/train.jsonl gave no training sequences within --max-length {config.max_length}.")
    return train_rows, valid_rows, packed


@dataclass(frozen=True)
class _Schedule:
    """Batch sizes, steps and precision, from the config and the number of sequences."""

    learning_rate: float
    per_device: int
    accumulation: int
    world: int
    total_steps: int
    eval_steps: int
    on_gpu: bool
    bf16: bool

    @property
    def effective_batch_size(self) -> int:
        return self.per_device * self.accumulation * self.world

    @classmethod
    def of(cls, config: TrainConfig, sequences: int) -> _Schedule:
        import torch

        per_device = min(config.per_device_batch_size, sequences)
        effective = config.effective_batch_size or max(per_device, min(1024, sequences // 32))
        world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate/torchrun on several GPUs
        accumulation = max(1, math.ceil(effective / (per_device * world)))
        steps_per_epoch = max(1, sequences // (per_device * accumulation * world))
        total_steps = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
        on_gpu = torch.cuda.is_available()
        return cls(
            learning_rate=config.learning_rate or (1e-3 if config.from_scratch else 2e-5),
            per_device=per_device, accumulation=accumulation, world=world, total_steps=total_steps,
            eval_steps=config.eval_steps or max(1, total_steps // 10), on_gpu=on_gpu,
            bf16=(config.bf16 == "true") or (config.bf16 == "auto" and on_gpu and torch.cuda.is_bf16_supported()),
        )


def _trainable(config: TrainConfig, model):
    """The model as training updates it: tied embeddings told to the Trainer, LoRA adapters when asked."""
    _tied_on_resume(model)
    if not config.lora:
        return model
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))


def _perplexity(config: TrainConfig, model, tokenizer, valid_convs):
    """The user-turn perplexity on the validation conversations (None without them)."""
    if not valid_convs:
        return None
    from ..evaluation.simulators.perplexity import target_perplexity

    return target_perplexity(model, tokenizer, valid_convs, use_intent=config.use_intent, max_length=config.max_length)


def _trainer(config: TrainConfig, plan: _Schedule, model, tokenizer, train_rows, valid_rows, out: Path):
    """Transformers' Trainer for the run, with one progress bar for its steps."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, ProgressCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=plan.per_device,
        per_device_eval_batch_size=plan.per_device,
        gradient_accumulation_steps=plan.accumulation,
        learning_rate=plan.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=int(config.warmup_ratio * plan.total_steps),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        bf16=plan.bf16,
        # only when asked: transformers 5 warns about the argument's name whenever it is passed
        **({"gradient_checkpointing": True} if config.gradient_checkpointing else {}),
        eval_strategy="steps" if valid_rows else "no",
        eval_steps=plan.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps or plan.eval_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        report_to=[],
        seed=config.seed,
        remove_unused_columns=False,
        use_cpu=not plan.on_gpu,
        **config.extra,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(valid_rows) if valid_rows else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
    )
    if not args.disable_tqdm:  # one progress bar for training: its steps, with no bar per evaluation inside it
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_steps_bar())
    return trainer


def _steps_bar():
    from transformers import ProgressCallback

    class StepsBar(ProgressCallback):
        """Transformers' training bar without the bar it opens for every evaluation, showing the
        latest training and validation loss on the bar instead of printing a line per log (every
        logged figure is kept in ``metrics.json``'s ``log_history``)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.shown: dict[str, str] = {}

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            return None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None:
                return
            latest = {k: f"{v:.4g}" for k, v in (logs or {}).items() if k in ("loss", "eval_loss") and isinstance(v, (int, float))}
            if latest:
                self.shown = {**self.shown, **latest}
                self.training_bar.set_postfix(self.shown, refresh=False)

    return StepsBar


def _run(trainer, resume: bool) -> None:
    """Train, from the last checkpoint when resuming, with no progress bar per checkpoint written."""
    with _no_hub_bars(), warnings.catch_warnings():
        # transformers asks peft's models whether they checkpoint through a name it has deprecated,
        # whether or not --gradient-checkpointing was given: not the user's to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer.train(resume_from_checkpoint=True if resume else None)


def _final_model(config: TrainConfig, trainer, model, bf16: bool):
    """The trained model as saved: LoRA merged in, float32 unless trained in bfloat16."""
    import torch

    if config.lora:
        model = trainer.model.merge_and_unload()
    return model.to(torch.float32) if not bf16 else model


def _save(config: TrainConfig, model, tokenizer, metrics: dict, out: Path) -> None:
    """The model and tokenizer, the metrics and the config, in ``out``."""
    import yaml

    from .model_prep import save_together

    with _no_hub_bars():  # no bar for writing the model: training's bar was the step's one
        save_together(model, tokenizer, out)
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    write_text(out / "userlm_train_config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))


@contextlib.contextmanager
def _no_hub_bars():
    """Transformers' own progress bars off for a while (checkpoints and weights written)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
