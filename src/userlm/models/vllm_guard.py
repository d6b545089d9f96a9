"""The user-turn guardrails inside vLLM's sampler, as one batch-level logits processor.

vLLM loads this class in its engine process (``logits_processors=["userlm.models.vllm_guard:Guardrails"]``)
and calls it on every decoding step, before temperature and top-p, on the raw logits (userlm sets
no ``logit_bias`` or ``min_tokens``, vLLM's own processors that run earlier). A request opts in by
carrying ``extra_args={"userlm": {...}}`` in its sampling parameters:

``end_id``          the id of ``<|endconversation|>``
``suppress_end``    the end token is impossible (its logit is minus infinity) ...
``end_threshold``   ... except that the turn is ended when P(end) at the first content position
                    reaches this (the end token is then the only token left)
``banned``          token ids refused as the first worded token (a letter or digit written)
``content_offset``  generated whitespace tokens expected before the content

The same rules as the ``hf:`` engine (:mod:`userlm.models.engine`), step for step; the P(end) the
simulation records comes from the raw log-probabilities vLLM returns, not from here.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

KEY = "userlm"


class _Request:
    """One opted-in request of the batch: its arguments and its output so far (a live list)."""

    __slots__ = ("banned", "end_id", "offset", "output", "seen", "spaced", "suppress_end", "threshold", "worded")

    def __init__(self, args: dict, output: list[int]):
        self.end_id = args.get("end_id")
        self.suppress_end = bool(args.get("suppress_end"))
        self.threshold = args.get("end_threshold")
        banned = args.get("banned") or []
        self.banned = torch.tensor(banned, dtype=torch.long) if banned else None
        self.offset = int(args.get("content_offset", 0))
        self.output = output
        self.seen = 0  #: how many output tokens were looked at
        self.worded = False  #: a token holding a letter or digit was written
        self.spaced = True  #: every token so far is whitespace

    def advance(self, whitespace: list[bool], wordless: list[bool]) -> None:
        for token in self.output[self.seen :]:
            if token < len(wordless) and not wordless[token]:
                self.worded = True
            if token >= len(whitespace) or not whitespace[token]:
                self.spaced = False
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
        self._tables: tuple[list[bool], list[bool]] | None = None

    def is_argmax_invariant(self) -> bool:
        return False  # it bans tokens

    def _vocab(self) -> tuple[list[bool], list[bool]]:
        if self._tables is None:
            from transformers import AutoTokenizer

            from .vocab import vocab_tables

            tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer, trust_remote_code=self.config.trust_remote_code)
            tables = vocab_tables(tokenizer)
            self._tables = (tables.whitespace.tolist(), tables.wordless.tolist())
        return self._tables

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.requests.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            args = (params.extra_args or {}).get(KEY) if params is not None else None
            if args:
                self._vocab()
                self.requests[index] = _Request(args, output)
            else:
                self.requests.pop(index, None)
        for a, b, direction in batch_update.moved:
            first, second = self.requests.pop(a, None), self.requests.pop(b, None)
            if first is not None:
                self.requests[b] = first
            if direction == MoveDirectionality.SWAP and second is not None:
                self.requests[a] = second

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.requests:
            return logits
        whitespace, wordless = self._vocab()
        for index, request in self.requests.items():
            request.advance(whitespace, wordless)
            row = logits[index]
            end = request.end_id
            # at the first content position the turn ends if P(end) reaches the threshold
            if (end is not None and request.threshold is not None and request.spaced and len(request.output) == request.offset
                    and torch.softmax(row.float(), dim=-1)[end].item() >= request.threshold):
                row.fill_(float("-inf"))
                row[end] = 0.0
                continue
            if end is not None and request.suppress_end:
                row[end] = float("-inf")
            if request.banned is not None and not request.worded:
                row[request.banned[request.banned < row.shape[-1]]] = float("-inf")
        return logits
