"""``userlm serve``: a guarded simulated user behind an OpenAI-compatible chat API.

    userlm serve --user hf:microsoft/UserLM-8b --port 8000
    userlm serve --user hf:microsoft/UserLM-8b --stop-marker '###STOP###'   # as tau2-bench expects

Point any framework's user simulator (an OpenAI-compatible chat model) at http://HOST:PORT/v1.
Unlike ``simulate``, the user may end the conversation from its second turn on (``--min-turns 1``):
frameworks stop when their simulated user says so.
"""

from __future__ import annotations

import argparse
import os
import sys

from .options import COUNT, add_guardrail_options, add_model_options, faults_from, guardrails_from, provider_options
from .stopping import run_async


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("serve", help="serve a guarded simulated user over an OpenAI-compatible chat API",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=COUNT, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--view", choices=("flipped", "plain"), default="flipped",
                   help="flipped: assistant messages are the user's turns, user messages the agent's (what frameworks send a "
                        "prompted user); plain: the other way round (default: flipped)")
    p.add_argument("--stop-marker", default="<|endconversation|>", metavar="TEXT",
                   help="the answer when the user ends the conversation (default: <|endconversation|>; tau2-bench: ###STOP###)")
    p.add_argument("--exhausted-marker", default="<|guardrail_exhausted|>", metavar="TEXT",
                   help="the answer when every draft of a turn was refused, never the stop marker (default: <|guardrail_exhausted|>; "
                        "tau2-bench: ###OUT-OF-SCOPE###, which it records as an out-of-scope stop rather than the user's)")
    p.add_argument("--served-model-name", metavar="NAME", help="the model id /v1/models lists (default: the --user spec)")
    p.add_argument("--api-key", metavar="TOKEN", default=os.environ.get("USERLM_SERVE_API_KEY"),
                   help="require 'Authorization: Bearer TOKEN' (default: USERLM_SERVE_API_KEY, else no token)")
    add_model_options(p, assistant=False)
    add_guardrail_options(p, min_turns=1)  # a framework's conversation ends when its user does: let it
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..integrations.serve import ServeSettings, serve
    from ..models.registry import user_model
    from ..user import SimulatedUser

    settings = ServeSettings(view=args.view, stop_marker=args.stop_marker, exhausted_marker=args.exhausted_marker, api_key=args.api_key,
                             model_name=args.served_model_name)
    user = SimulatedUser(user_model(args.user, provider_options(args, "user")), guardrails_from(args), faults_from(args))
    run_async(serve(user, settings, args.host, args.port, ready=lambda line: print(line, file=sys.stderr, flush=True)),
              hint="the server stopped.")
    return 0
