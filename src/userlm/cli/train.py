"""``userlm train``: train a user model on prepared conversations (see userlm.training.train).

    userlm train --data prepared/ --base meta-llama/Llama-3.2-1B --out models/my-userlm
    userlm train --data prepared/ --from-scratch tiny --no-intent --out models/tiny-userlm
    userlm train --config train.yaml
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

#: each tuning flag: its type, what it means, and what the trainer picks when it is left open
_HELP: dict[str, tuple[type, str, object]] = {
    "vocab_size": (int, "tokenizer size when training from scratch", 4096),
    "max_length": (int, "tokens per packed conversation; targets that do not fit whole are dropped and counted", 2048),
    "learning_rate": (float, "peak learning rate", "2e-5, or 1e-3 from scratch"),
    "lr_scheduler": (str, "learning-rate schedule, any of transformers' (linear, cosine, constant, ...)", "cosine"),
    "warmup_ratio": (float, "share of the steps spent warming the learning rate up", 0.03),
    "epochs": (float, "passes over the training conversations", 1.0),
    "max_steps": (int, "optimizer steps at most", "-1: as many as --epochs make"),
    "effective_batch_size": (int, "conversations per optimizer step, reached by gradient accumulation across devices",
                             "the training conversations / 32, at most 1024"),
    "per_device_batch_size": (int, "conversations per forward pass on each device", 4),
    "bf16": (str, "bfloat16 training: auto, true or false", "auto: on GPUs that support it"),
    "lora_r": (int, "LoRA rank (with --lora)", 16),
    "lora_alpha": (int, "LoRA scaling (with --lora)", 32),
    "lora_dropout": (float, "dropout on the LoRA adapters (with --lora)", 0.05),
    "eval_steps": (int, "optimizer steps between validation losses", "about 10 evaluations a run"),
    "save_steps": (int, "optimizer steps between checkpoints", "as --eval-steps"),
    "logging_steps": (int, "optimizer steps between logged losses", 10),
    "seed": (int, "seed of the data order and of new weights", 0),
}


def register(commands: argparse._SubParsersAction) -> None:
    from ..training.train import SCRATCH_SIZES

    p = commands.add_parser("train", help="train a user model from prepared conversations", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="YAML", help="settings from a YAML file (flags given here override it)")
    p.add_argument("--data", help="folder with train.jsonl and validation.jsonl")
    p.add_argument("--out", help="where the trained model goes")
    p.add_argument("--base", help="base checkpoint: local directory or hub id")
    p.add_argument("--from-scratch", choices=list(SCRATCH_SIZES), help="train a new tokenizer and a small model instead")
    p.add_argument("--no-intent", dest="use_intent", action="store_const", const=False, help="the paper's no-intent variant")
    p.add_argument("--lora", action="store_const", const=True, help="LoRA adapters (merged into the saved model)")
    p.add_argument("--gradient-checkpointing", action="store_const", const=True, help="trade compute for memory on long conversations")
    p.add_argument("--resume", action="store_const", const=True, help="go on from the last checkpoint")
    for name, (kind, meaning, default) in _HELP.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{meaning} (default: {default})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.train import TrainConfig, train

    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(config, f.name, value)
    metrics = train(config)
    before, after = metrics["validation_user_turn_perplexity_before"], metrics["validation_user_turn_perplexity_after"]
    if before is not None:
        print(f"validation user-turn perplexity: {before:.1f} before training, {after:.1f} after", file=sys.stderr)
    print(f"saved to {config.out}; simulate with: userlm simulate --user hf:{config.out} ...", file=sys.stderr)
    return 0
