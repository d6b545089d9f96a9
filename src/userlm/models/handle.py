"""The conversation handle every request carries, user side and assistant side.

A handle names one conversation: its ``id`` is what replicas route on and what the engines key
their prefix caches on, its ``seed`` the conversation's seed (:func:`userlm.simulation.conversation_seed`),
and for each model that took part (its *view*: ``user:hf:DIR``, ``assistant:vllm:DIR``), the
token ids that model was fed and sampled so far: its last prompt followed by the turn it wrote,
as sampled. The next prompt of that model starts from those ids and tokenizes only what is new
(the other side's reply, the template's headers), so a model sees its own turns exactly as it
wrote them and its prefix cache keeps matching; nothing is searched for in decoded text.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Seen:
    """What one model was fed and wrote last in a conversation."""

    prompt_text: str  #: its last prompt, as text ...
    prompt: list[int]  #: ... and as the ids it was fed
    turn_text: str  #: the turn it wrote there, as text (no trailing whitespace tokens) ...
    turn: list[int]  #: ... and as the ids it sampled
    turns: list[list[int]] = field(default_factory=list)  #: the ids of every turn it wrote, as sampled


@dataclass(eq=False)
class ConversationHandle:
    """One conversation, as every request about it names it (see the module's docstring)."""

    id: str
    seed: int = 0
    seen: dict[str, Seen] = field(default_factory=dict, repr=False)

    def prompt(self, view: str, text: str, tokenizer: Any, canonical: Callable[[], list[int]],
               messages: Sequence[dict[str, str]] = ()) -> list[int]:
        """The ids of the prompt ``text`` for ``view``: the ids it was fed last time when ``text``
        is that prompt again (a redraft); its last prompt and turn as fed and sampled, then what is
        new tokenized, when ``text`` continues them; else ``canonical()`` (the renderer's ids: the
        first turn, an edited history, a message that spells a control token, which the renderer
        keeps plain)."""
        last = self.seen.get(view)
        if last is None:
            return canonical()
        if text == last.prompt_text:
            return list(last.prompt)
        before = last.prompt_text + last.turn_text
        if len(text) <= len(before) or not text.startswith(before):
            return canonical()
        from ..render import spells_control_token

        if any(spells_control_token(tokenizer, m["content"]) for m in messages):
            return canonical()
        rest = text[len(before) :]
        rest_ids = tokenizer.encode(rest, add_special_tokens=False)
        if tokenizer.decode(rest_ids, skip_special_tokens=False) != rest:  # a tokenizer that cannot tokenize pieces
            return canonical()
        return last.prompt + last.turn + rest_ids

    def wrote(self, view: str, prompt_text: str, prompt: list[int], turn: list[int], tokenizer: Any,
              is_space: Callable[[int], bool]) -> None:
        """Keep what ``view`` was fed (``prompt``, rendered from ``prompt_text``) and the turn it
        sampled there, without the whitespace tokens at its end (a turn is kept stripped, so the
        next prompt does not repeat them)."""
        kept = list(turn)
        while kept and is_space(kept[-1]):
            kept.pop()
        last = self.seen.get(view)
        earlier = [] if last is None else last.turns[:-1] if last.prompt_text == prompt_text else last.turns  # a redraft replaces its draft
        self.seen[view] = Seen(prompt_text, list(prompt), tokenizer.decode(kept, skip_special_tokens=False), kept,
                               earlier + [list(turn)])


def handle_of(conversation: ConversationHandle | str | None, seed: int = 0) -> ConversationHandle | None:
    """A handle for ``conversation`` (an id names a new one, whose token ids start empty)."""
    if conversation is None or isinstance(conversation, ConversationHandle):
        return conversation
    return ConversationHandle(conversation, seed)


class Handles:
    """Handles by id, the least recently used dropped past ``max_entries``: for a process that
    receives requests naming a conversation only by id (a server, a replica)."""

    def __init__(self, max_entries: int = 4096):
        self.max_entries = max_entries
        self._handles: OrderedDict[str, ConversationHandle] = OrderedDict()

    def get(self, conversation_id: str, seed: int = 0) -> ConversationHandle:
        handle = self._handles.get(conversation_id)
        if handle is None:
            handle = self._handles[conversation_id] = ConversationHandle(conversation_id, seed)
        self._handles.move_to_end(conversation_id)
        while len(self._handles) > self.max_entries:
            self._handles.popitem(last=False)
        return handle

    def adopt(self, handle: ConversationHandle | None) -> ConversationHandle | None:
        """This process's handle of the same id as ``handle`` (``handle`` itself the first time):
        a handle sent from another process comes as a copy, so what the model here keeps in it
        lives in this process's one."""
        if handle is None:
            return None
        mine = self._handles.get(handle.id)
        if mine is None:
            mine = self._handles[handle.id] = handle
        self._handles.move_to_end(handle.id)
        while len(self._handles) > self.max_entries:
            self._handles.popitem(last=False)
        return mine

    def clear(self) -> None:
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)
