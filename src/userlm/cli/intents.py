"""``userlm intents``: write a high-level intent for each conversation with any chat model.

    userlm intents prepared/train.jsonl --model openai:gpt-4o --out prepared/with-intents/train.jsonl

Concurrent, cached and resumable: run it again to finish, or to retry the conversations listed
in ``<out>.failed.jsonl``.
"""

from __future__ import annotations

import argparse
import sys

from .stopping import run_async


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("intents", help="write an intent for each conversation with a chat model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a JSONL file of conversations (e.g. prepared/train.jsonl)")
    p.add_argument("--model", required=True, metavar="SPEC", help="chat model: openai:MODEL, hf:PATH, python:MODULE:FN")
    p.add_argument("--out", required=True, metavar="FILE", help="the conversations with their intents, as JSONL")
    p.add_argument("--base-url", help="OpenAI-compatible server (default: OPENAI_BASE_URL)")
    p.add_argument("--concurrency", type=int, default=16, metavar="N", help="requests to the chat model in flight (default: 16)")
    p.add_argument("--overwrite", action="store_true", help="also replace intents the conversations brought")
    p.add_argument("--cache", metavar="FILE", help="answers cache (default: $USERLM_CACHE_DIR or ~/.cache/userlm, intents.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:

    from ..conversation import read_conversations
    from ..errors import UserError
    from ..models.base import SamplingSettings
    from ..models.http.openai_compat import Endpoint
    from ..models.registry import ProviderOptions, chat_model
    from ..prepare.intent_writer import write_intents

    if args.input == args.out:
        raise UserError("--out must differ from the input file.")
    conversations = read_conversations(args.input)
    options = ProviderOptions(sampling=SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=120),
                              endpoint=Endpoint(base_url=args.base_url, concurrency=args.concurrency))
    model = chat_model(args.model, options)
    result = run_async(write_intents(conversations, model, args.out, concurrency=args.concurrency,
                                       overwrite_existing=args.overwrite, progress=not args.no_progress,
                                       cache=args.cache))
    print(f"{args.out}: {result.written} intents written ({result.cached} from the cache), {result.skipped} already there, "
          f"{len(result.failed)} failed" + (f" (listed in {args.out}.failed.jsonl; run again to retry)" if result.failed else ""),
          file=sys.stderr)
    return 1 if result.failed else 0
