"""The one place where a conversation is turned into model input.

Three views of the same conversation live here and nowhere else:

* the **user-model view** (UserLM format): the intent is the ``system`` message, the simulated
  user's own turns are ``user``, the assistant's replies are ``assistant``, and the prompt
  ends by opening a ``user`` turn that the model completes;
* the **assistant view**: the plain chat messages, as any chat API takes them;
* the **flipped view** for instruction-tuned chat models prompted to play the user: the
  assistant's replies become ``user`` messages and the simulated user's turns ``assistant``.

Training data preparation renders through :func:`training_ids`, which calls the same
:func:`user_prompt_ids` as simulation, so a model is trained on exactly the format it is later
prompted with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .prompts import fill_prompt, load_prompt

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase

#: The chat template published with microsoft/UserLM-8b's tokenizer.
USERLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}\n"
    "{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{{ '<|start_header_id|>user<|end_header_id|>' }}"
)
#: what the UserLM template writes after the ``user`` header, before the content: the opening of
#: every user turn as text (servers get prompts with it; local engines read it off the tokenizer,
#: see :func:`turn_opening`)
USERLM_TURN_OPENING = "\n"
#: A Llama-3-instruct-style template, for the small models that play the assistant in tests and demos.
ASSISTANT_CHAT_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
END_OF_CONVERSATION = "<|endconversation|>"
END_OF_TURN = "<|eot_id|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
#: Special tokens a UserLM-format tokenizer carries.
USERLM_SPECIAL_TOKENS = ("<|begin_of_text|>", START_HEADER, END_HEADER, END_OF_TURN, END_OF_CONVERSATION)

Chat = list[dict[str, str]]


class ControlText(str):
    """Message content meant as the control token it spells, such as the end-of-conversation
    training target. Any other message text is plain text: a control token that it spells (a
    user who typed ``<|eot_id|>``) is tokenized as its characters, never as the token, so that
    data cannot teach a model to end a turn or a conversation mid-text."""


def _as_chat(messages: Iterable[Any]) -> Chat:
    out: Chat = []
    for m in messages:
        if isinstance(m, Mapping):
            out.append({"role": m["role"], "content": m["content"]})
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def user_view(intent: str | None, messages: Iterable[Any]) -> Chat:
    """The conversation as the user model sees it: intent as system message, then the turns."""
    chat = _as_chat(messages)
    return ([{"role": "system", "content": intent}] if intent else []) + chat


def assistant_view(messages: Iterable[Any]) -> Chat:
    """The conversation as the assistant sees it."""
    return _as_chat(messages)


def flipped_view(messages: Iterable[Any]) -> Chat:
    """Swap roles so a chat model prompted to play the user writes the user's turns as its own."""
    swap = {"user": "assistant", "assistant": "user"}
    return [{"role": swap[m["role"]], "content": m["content"]} for m in _as_chat(messages)]


_MAY_END = (
    f"- When your goal is met, or you would give up in real life, reply with exactly {END_OF_CONVERSATION} "
    "and nothing else to end the conversation."
)
_MAY_NOT_END = "- Keep the conversation going: always write a message."


def prompted_user_view(intent: str | None, messages: Iterable[Any], *, allow_end: bool) -> Chat:
    """The chat a general chat model prompted to play the user sees: the role-play system prompt
    with the intent, then the conversation with roles flipped (opened by a fixed first message
    when the user speaks first)."""
    system = fill_prompt("prompted_user.txt", intent=intent or "Chat about whatever you like.",
                         ending=_MAY_END if allow_end else _MAY_NOT_END)
    flipped = flipped_view(messages)
    if not flipped or flipped[0]["role"] != "user":
        flipped = [{"role": "user", "content": load_prompt("prompted_user_start.txt").strip()}] + flipped
    return [{"role": "system", "content": system}] + flipped


def render_userlm(chat: Sequence[Mapping[str, str]]) -> str:
    """Render with the UserLM-8b template, without a tokenizer (for prompts sent over HTTP).

    Equal, character for character, to ``tokenizer.apply_chat_template(chat, tokenize=False)``
    for a tokenizer carrying :data:`USERLM_CHAT_TEMPLATE` (a test checks it).
    """
    parts = [f"{START_HEADER}{m['role']}{END_HEADER}\n{m['content']}{END_OF_TURN}" for m in chat]
    parts.append(f"{START_HEADER}user{END_HEADER}")
    return "".join(parts)


def user_prompt_text(intent: str | None, messages: Iterable[Any]) -> str:
    """The prompt text for a user model served over a plain completions endpoint."""
    return render_userlm(user_view(intent, messages))


def chat_template_of(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's own chat template, or the UserLM-8b template when it has none."""
    return tokenizer.chat_template or USERLM_CHAT_TEMPLATE


def _opening_only(tokenizer: PreTrainedTokenizerBase) -> str:
    """The prompt of a conversation with no intent and no history (the first turn of the
    no-intent variant): only the opened user turn, which only the UserLM template renders."""
    if chat_template_of(tokenizer) != USERLM_CHAT_TEMPLATE:
        raise ValueError("the tokenizer's chat template cannot render an empty conversation; give an intent")
    return render_userlm([])


def template_text(tokenizer: PreTrainedTokenizerBase, chat: Sequence[Mapping[str, str]], *, template: str | None = None,
                  opened: bool = True) -> str:
    """``chat`` rendered with ``template`` (default: the tokenizer's own, else UserLM's), the
    generation prompt opened when ``opened``."""
    return tokenizer.apply_chat_template(_as_chat(chat), chat_template=template or chat_template_of(tokenizer),
                                         add_generation_prompt=opened, tokenize=False)


def template_ids(tokenizer: PreTrainedTokenizerBase, chat: Sequence[Mapping[str, str]], *, template: str | None = None,
                 opened: bool = True) -> list[int]:
    """The token ids of :func:`template_text`. The template's own control tokens are tokens;
    message text is plain text (see :class:`ControlText`): where a message spells a control
    token, its text is tokenized apart with special tokens split into characters."""
    chat = _as_chat(chat)
    text = template_text(tokenizer, chat, template=template, opened=opened)
    specials = _control_strings(tokenizer)
    if not any(not isinstance(m["content"], ControlText) and _spells(m["content"], specials) for m in chat):
        return tokenizer.encode(text, add_special_tokens=False)
    spans, cursor = [], 0
    for m in chat:
        content = m["content"]
        for candidate in (content, content.strip()):  # templates may trim what they render
            at = text.find(candidate, cursor) if candidate else -1
            if at >= 0:
                break
        else:
            if content.strip():
                raise ValueError("the chat template changes message text, so text that spells a control token cannot be "
                                 "kept plain; remove control tokens such as <|eot_id|> from the messages")
            continue
        if not isinstance(content, ControlText) and _spells(candidate, specials):
            spans.append((at, at + len(candidate)))
        cursor = at + len(candidate)
    ids, position = [], 0
    for start, end in spans:
        ids += tokenizer.encode(text[position:start], add_special_tokens=False)
        ids += tokenizer.encode(text[start:end], add_special_tokens=False, split_special_tokens=True)
        position = end
    return ids + tokenizer.encode(text[position:], add_special_tokens=False)


def spells_control_token(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether ``text`` contains the spelling of one of the tokenizer's special tokens."""
    return _spells(text, _control_strings(tokenizer))


def _control_strings(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = set(tokenizer.all_special_tokens) | {t.content for t in decoder.values() if getattr(t, "special", False)}
    return tuple(t for t in found if t)


def _spells(text: str, specials: tuple[str, ...]) -> bool:
    return any(t in text for t in specials)


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Iterable[Any]) -> list[int]:
    """Token ids of an assistant's prompt: :func:`assistant_view` in the model's own chat
    template, the assistant's turn opened."""
    return template_ids(tokenizer, assistant_view(messages))


def chat_prompt_string(tokenizer: PreTrainedTokenizerBase, messages: Iterable[Any]) -> str:
    """The text that :func:`chat_prompt_ids` tokenizes."""
    return template_text(tokenizer, assistant_view(messages))


def user_prompt_ids(tokenizer: PreTrainedTokenizerBase, intent: str | None, messages: Iterable[Any]) -> list[int]:
    """Token ids of the user-model prompt: the chat template applied to :func:`user_view`."""
    chat = user_view(intent, messages)
    return template_ids(tokenizer, chat) if chat else tokenizer.encode(_opening_only(tokenizer), add_special_tokens=False)


def user_prompt_string(tokenizer: PreTrainedTokenizerBase, intent: str | None, messages: Iterable[Any]) -> str:
    """The text that :func:`user_prompt_ids` tokenizes."""
    chat = user_view(intent, messages)
    return template_text(tokenizer, chat) if chat else _opening_only(tokenizer)


def prompt_ends_with_whitespace(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the template's opened user turn already ends in whitespace.

    The UserLM template does not: the model itself first writes the newline after the
    ``user`` header, then the utterance.
    """
    return template_text(tokenizer, [{"role": "system", "content": "x"}])[-1:].isspace()


def training_ids(
    tokenizer: PreTrainedTokenizerBase,
    intent: str | None,
    messages: Sequence[Any],
    *,
    end: bool = True,
) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation and which of them are training targets.

    Targets are what the user model writes: each user turn (from the newline after its header
    through its end-of-turn token) and, when ``end`` is true, a final turn holding only
    ``<|endconversation|>`` after the last assistant reply. Everything else (intent, headers,
    assistant turns) is context. The ids are built from the prompts that simulation feeds the
    model, so every target is preceded by exactly the prompt the model will later see.
    """
    chat = _as_chat(messages)
    if end:
        chat = chat + [{"role": "user", "content": ControlText(END_OF_CONVERSATION)}]
    ids: list[int] = []
    mask: list[bool] = []
    for i, message in enumerate(chat):
        if message["role"] != "user":
            continue
        prompt = user_prompt_ids(tokenizer, intent, chat[:i])
        if prompt[: len(ids)] != ids:
            raise ValueError("the chat template does not render conversations as growing prefixes")
        mask.extend([False] * (len(prompt) - len(ids)))
        ids = prompt
        upto = user_prompt_ids(tokenizer, intent, chat[: i + 1])
        after = _opened_user_turn(tokenizer, upto)
        target = upto[len(ids) : len(upto) - after]
        ids = ids + target
        mask.extend([True] * len(target))
    return ids, mask


def turn_opening_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids every user turn of the training data starts with before its content: what the
    template writes after the ``user`` header (the UserLM template: one newline). Read off the
    end-of-conversation target; empty when the tokenizer has no ``<|endconversation|>``."""
    end = tokenizer.convert_tokens_to_ids(END_OF_CONVERSATION)
    if end is None or end == tokenizer.unk_token_id:
        return []
    ids, mask = training_ids(tokenizer, "x", [], end=True)
    target = [t for t, m in zip(ids, mask) if m]
    return target[: target.index(end)] if end in target else []


@dataclass(frozen=True)
class TurnOpening:
    """How a user model's prompt opens the turn it writes. Every user turn starts with what the
    template writes after its header (the newline): that is put in the prompt rather than
    sampled, so P(end) is read where the content starts."""

    ids: list[int]  #: appended to every prompt (empty when the prompt already ends with whitespace)
    text: str  #: those ids as text
    content_offset: int  #: sampled tokens before the content starts (1: the opening is sampled after all)


def turn_opening(tokenizer: PreTrainedTokenizerBase) -> TurnOpening:
    """The opening a user model's prompts end with (see :class:`TurnOpening`)."""
    opened_with_whitespace = prompt_ends_with_whitespace(tokenizer)
    ids = [] if opened_with_whitespace else turn_opening_ids(tokenizer)
    return TurnOpening(ids, tokenizer.decode(ids, skip_special_tokens=False), 0 if ids or opened_with_whitespace else 1)


def _opened_user_turn(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> int:
    """How many trailing ids of a rendered prompt are the opened ``user`` turn (the generation prompt)."""
    header = tokenizer.encode(f"{START_HEADER}user{END_HEADER}", add_special_tokens=False)
    if ids[-len(header) :] != header:
        raise ValueError("the chat template does not end its prompts by opening a user turn")
    return len(header)


def chat_target_ids(
    tokenizer: PreTrainedTokenizerBase, chat: Sequence[Mapping[str, str]], *, last_only: bool = False
) -> list[tuple[list[int], list[bool]]]:
    """Token ids and target mask for a chat model scored on its own (``assistant``) turns.

    Used to score instruction-tuned chat models as users through the flipped view: each
    ``assistant`` message is a target given everything before it, rendered with the model's
    own chat template (the prompt opened by ``add_generation_prompt``, then the message and the
    template's end-of-turn tokens). When the template renders the conversation as growing
    prefixes, one sequence holds every target; otherwise each target gets its own sequence.
    With ``last_only``, only the last message is a target (one sequence, up to its end).
    """
    chat = _as_chat(chat)

    def render(messages: Chat, opened: bool) -> list[int]:
        return template_ids(tokenizer, messages, template=tokenizer.chat_template, opened=opened)

    pieces: list[tuple[list[int], list[bool]]] = []
    for i, message in enumerate(chat):
        if message["role"] != "assistant" or (last_only and i != len(chat) - 1):
            continue
        prompt = render(chat[:i], True)
        whole = render(chat[: i + 1], False)
        if whole[: len(prompt)] != prompt:
            raise ValueError("the chat template does not render an assistant turn as a continuation of its prompt")
        pieces.append((whole, [False] * len(prompt) + [True] * (len(whole) - len(prompt))))
    merged: tuple[list[int], list[bool]] = ([], [])
    for ids, mask in pieces:
        if ids[: len(merged[0])] != merged[0]:
            return pieces  # not growing prefixes (e.g. a template that drops earlier reasoning)
        merged = (ids, merged[1] + mask[len(merged[1]) :])
    return [merged] if pieces else []


def target_spans(mask: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of each run of target tokens."""
    spans, start = [], None
    for i, m in enumerate(mask + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans
