"""``userlm train``: train a user model on prepared conversations (see userlm.training.train).

    userlm train --data prepared/ --base meta-llama/Llama-3.2-1B --out models/my-userlm
    userlm train --data prepared/ --from-scratch tiny --no-intent --out models/tiny-userlm
    userlm train --config train.yaml
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

#: what the trainer picks when a setting is left open
_DEFAULTS = {"learning_rate": "2e-5, or 1e-3 from scratch", "effective_batch_size": "the training conversations / 32, at most 1024",
             "eval_steps": "about 10 evaluations a run", "save_steps": "as --eval-steps", "max_steps": "-1: as many as --epochs make"}


def register(commands: argparse._SubParsersAction) -> None:
    from ..training.train import SCRATCH_SIZES, TrainConfig

    d = TrainConfig()
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
    for name, kind in [("vocab_size", int), ("max_length", int), ("learning_rate", float), ("lr_scheduler", str),
                       ("warmup_ratio", float), ("epochs", float), ("max_steps", int), ("effective_batch_size", int),
                       ("per_device_batch_size", int), ("bf16", str), ("lora_r", int), ("lora_alpha", int),
                       ("lora_dropout", float), ("eval_steps", int), ("save_steps", int), ("logging_steps", int), ("seed", int)]:
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"(default: {_DEFAULTS.get(name, getattr(d, name))})")
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
