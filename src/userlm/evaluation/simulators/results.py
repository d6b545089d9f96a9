"""The typed shape of a user-simulator evaluation, as ``user_eval.json`` holds it: each part's
result, each simulator's row and the whole report. The report and the tables read these keys
and nothing else."""

from __future__ import annotations

from typing import Any, TypedDict

from typing_extensions import NotRequired

from ..metrics import Figure


class TerminationPoint(TypedDict):
    """A point after an assistant reply in a held-out conversation: did the real user end there,
    and the simulator's P(end) there."""

    conversation: str
    after_reply: int
    ended: bool
    prob: float


class ScoredConversation(TypedDict):
    id: str
    nll: float  #: summed negative log-likelihood of its user turns
    tokens: int  #: target tokens scored


class AlignmentPart(TypedDict, total=False):
    """Perplexity of the real held-out user turns under the simulator (local models only)."""

    skipped: str  #: why it was not measured
    format: str | None  #: "userlm" or "flipped" (a chat model prompted to play the user)
    ppl_intent: Figure
    ppl_no_intent: Figure
    ppl_intent_per_conversation: list[ScoredConversation]
    ppl_no_intent_per_conversation: list[ScoredConversation]
    end_points: list[TerminationPoint]  #: P(end) read from the logits while scoring


class TerminationPart(TypedDict):
    end_f1: Figure
    points: list[TerminationPoint]
    beyond_context: NotRequired[int]  #: points left out: the conversation so far did not fit the model's context


class ConversationsPart(TypedDict, total=False):
    """Diversity and intent overlap of conversations the simulator had with an assistant."""

    first_turn_diversity: Figure
    distinct_1: Figure
    distinct_2: Figure
    intent_overlap_first: Figure
    intent_overlap_turn: Figure
    intent_overlap_by_turn: dict[str, float | None]  #: user turn number -> mean overlap
    conversations: int  #: usable ones, measured
    simulated: int
    end_reasons: dict[str, int]
    skipped: str
    tokens: dict[str, dict[str, int]]  #: by side (user, assistant, judge): prompt and completion tokens this part used
    warning: str
    transcripts: str  #: the transcripts' path, relative to the evaluation's folder


class NaturalnessPart(TypedDict):
    naturalness: Figure


class AdherenceItem(TypedDict, total=False):
    """One scenario: the two turns, the simulator's reply, and how it was decided."""

    id: str
    source: str
    messages: list[dict[str, str]]
    user_reply: str | None
    adhered: bool | None  #: None: could not be decided
    method: str  #: "rule", "judge", "ended", "no first turn", "needs --judge", ...
    answered_itself: bool
    assistant_voice: bool
    mentioned: list[str]


class RolePart(TypedDict):
    role_adherence: Figure
    items: list[AdherenceItem]
    tokens: NotRequired[dict[str, dict[str, int]]]  #: by side (user, assistant, judge), as in ConversationsPart


class IntentPart(TypedDict):
    intent_adherence: Figure
    items: list[AdherenceItem]
    tokens: NotRequired[dict[str, dict[str, int]]]


class Parts(TypedDict, total=False):
    """Each part's result, as saved under ``parts/`` and resumed from."""

    alignment: AlignmentPart
    termination: TerminationPart
    conversations: ConversationsPart
    naturalness: NaturalnessPart
    role: RolePart
    intent: IntentPart
    replay: dict[str, Any]  #: the replay against real people (see :mod:`.replay`)


class SimulatorResult(TypedDict):
    simulator: str  #: the simulator's spec as given (--user)
    metrics: dict[str, Figure]  #: the table's figures, by column key
    missing: dict[str, str]  #: for each column without a figure, why
    parts: Parts
    warnings: list[str]
    replay: NotRequired[dict[str, Any]]  #: the replay figures (stop, turn_words, lexical, next_turn, controls), as in parts
    tokens: NotRequired[dict[str, dict[str, int]]]  #: its parts' tokens by side (user, assistant, judge), summed


class RealUsers(TypedDict):
    conversations: int
    metrics: dict[str, Any]  #: the conversation figures and naturalness, as for a simulator


class UserEvalReport(TypedDict):
    simulators: list[SimulatorResult]
    real_users: RealUsers
    published: dict[str, Any]  #: the paper's published rows, for comparison
    settings: dict[str, Any]  #: what the evaluation ran with
