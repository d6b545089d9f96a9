"""The user-turn guardrails inside vLLM's sampler, as one batch-level logits processor.

vLLM loads this class in its engine process (``logits_processors=["userlm.models.vllm.guard:Guardrails"]``)
and calls it on every decoding step, before temperature and top-p, on the raw logits (userlm sets
no ``logit_bias`` or ``min_tokens``, vLLM's own processors that run earlier). A request opts in by
carrying ``extra_args={"userlm": {...}}`` in its sampling parameters:

``end_id``          the id of ``<|endconversation|>``
``suppress_end``    the end token is impossible (its logit is minus infinity) ...
``end_threshold``   ... except that the turn is ended when P(end) at the first content position
                    reaches this (the end token is then the only token left)
``banned``          token ids refused as the first worded token (a letter or digit written)
``content_offset``  generated whitespace tokens expected before the content

The rules are :mod:`userlm.models.turn`'s, as in the ``hf:`` engine, step for step: each
request's turn is a :class:`~userlm.models.turn.TurnReader` fed the tokens vLLM wrote. The P(end)
the simulation records comes from the raw log-probabilities vLLM returns, not from here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

from ..turn import TurnReader, TurnRules, table

KEY = "userlm"


class _Request:
    """One opted-in request of the batch: its turn so far (read off its live output list)."""

    __slots__ = ("banned", "output", "seen", "turn")

    def __init__(self, args: dict, output: list[int], is_space, is_wordless):
        threshold = args.get("end_threshold")
        rules = TurnRules(end=args.get("end_id"), suppress_end=bool(args.get("suppress_end")), end_threshold=threshold,
                          content_offset=int(args.get("content_offset", 0)))
        self.turn = TurnReader(rules, is_space, is_wordless)
        banned = args.get("banned") or []
        self.banned = torch.tensor(banned, dtype=torch.long) if banned else None
        self.output = output
        self.seen = 0  #: how many output tokens were read

    def advance(self) -> None:
        for token in self.output[self.seen :]:
            if not self.turn.done:
                self.turn.read(token)
        self.seen = len(self.output)


class Guardrails(LogitsProcessor):
    """userlm's guardrails for the requests that ask for them; other requests pass untouched."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        args = (sampling_params.extra_args or {}).get(KEY)
        if args is None:
            return
        if not isinstance(args, dict) or not isinstance(args.get("end_id"), (int, type(None))):
            raise ValueError(f"extra_args[{KEY!r}] must be a dict with an integer end_id")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.config = vllm_config.model_config
        self.requests: dict[int, _Request] = {}
        self._tables: tuple[Callable[[int], bool], Callable[[int], bool]] | None = None

    def is_argmax_invariant(self) -> bool:
        return False  # it bans tokens

    def _vocab(self) -> tuple[Callable[[int], bool], Callable[[int], bool]]:
        if self._tables is None:
            from transformers import AutoTokenizer

            from ..vocab import vocab_tables

            tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer, trust_remote_code=self.config.trust_remote_code)
            tables = vocab_tables(tokenizer)
            self._tables = (table(tables.whitespace.tolist()), table(tables.wordless.tolist(), beyond=True))
        return self._tables

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.requests.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            args = (params.extra_args or {}).get(KEY) if params is not None else None
            if args:
                self.requests[index] = _Request(args, output, *self._vocab())
            else:
                self.requests.pop(index, None)
        for a, b, direction in batch_update.moved:
            first, second = self.requests.pop(a, None), self.requests.pop(b, None)
            if first is not None:
                self.requests[b] = first
            if direction == MoveDirectionality.SWAP and second is not None:
                self.requests[a] = second

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for index, request in self.requests.items():
            request.advance()
            turn, row = request.turn, logits[index]
            if turn.done:
                continue
            end = turn.rules.end
            # where the content starts the turn ends if P(end) reaches the threshold: the end token is all that is left
            if (turn.rules.end_threshold is not None and turn.starts_here()
                    and turn.measure(torch.softmax(row.float(), dim=-1)[end].item())):
                row.fill_(float("-inf"))
                row[end] = 0.0
                continue
            if turn.forbids_end():
                row[end] = float("-inf")
            if request.banned is not None and turn.forbids_banned():
                row[request.banned[request.banned < row.shape[-1]]] = float("-inf")
        return logits
