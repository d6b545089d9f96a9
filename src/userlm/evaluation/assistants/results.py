"""The typed shape of an assistant evaluation, as ``assistant.json`` holds it: a row per suite
and mode, a line per conversation, and the settings. The report and the tables read these keys
and nothing else."""

from __future__ import annotations

from typing import Any, TypedDict

from typing_extensions import NotRequired

from ..metrics import Descriptor, MeanCI


class ModeResult(TypedDict):
    """One task suite under one mode (full, concat, sharded, simulated)."""

    suite: str
    mode: str
    conversations: int
    score: MeanCI  #: mean score, 0-1, over conversations
    aptitude: float | None  #: 0-100 (Lost in Conversation's)
    unreliability: float | None  #: 0-100
    turns: Descriptor  #: user turns per conversation
    end_reasons: dict[str, int]
    tokens: NotRequired[dict[str, dict[str, int]]]  #: by side (user, assistant): prompt and completion tokens, summed
    code_isolation: NotRequired[dict[str, int]]  #: answer attempts by how their code was isolated
    intent_coverage: NotRequired[Descriptor]  #: simulated mode: share of the task's words the user conveyed
    lexical_difference: NotRequired[Descriptor]  #: simulated mode: share of the user's words not in the task
    drop_vs_full: NotRequired[MeanCI]  #: full mode's score minus this mode's, task by task (positive: this mode did worse)
    score_simulator_clean: NotRequired[MeanCI]  #: mean score over the conversations whose user conveyed every shard without faults
    simulator_failure_rate: NotRequired[MeanCI]  #: share of conversations that failed with the user at fault (simulator or both)
    failure_causes: NotRequired[dict[str, int]]  #: failed conversations by cause (assistant, simulator, both, unknown)


class ConversationResult(TypedDict):
    id: str
    task_id: str
    suite: str
    mode: str
    score: float
    turns: int
    end_reason: str | None
    failure_cause: NotRequired[str | None]  #: why it failed: assistant, simulator, both, unknown (None: it did not fail)
    missing_shards: NotRequired[list[int]]  #: the task's shards the user never conveyed
    faults: NotRequired[list[str] | None]  #: the faults its user's turns show (None: records before fault checks)


class AssistantReport(TypedDict):
    results: list[ModeResult]
    conversations: list[ConversationResult]
    settings: NotRequired[dict[str, Any]]  #: what the evaluation ran with
    published: NotRequired[dict[str, Any]]  #: the paper's published rows, for comparison
