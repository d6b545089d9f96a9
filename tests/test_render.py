"""The one renderer: UserLM prompt format, equal to the tokenizer's own chat template."""

from __future__ import annotations

from userlm.render import (
    END_OF_CONVERSATION,
    USERLM_CHAT_TEMPLATE,
    assistant_view,
    flipped_view,
    render_userlm,
    training_ids,
    user_prompt_ids,
    user_prompt_text,
    user_view,
)

INTENT = "You are a user chatting with an assistant to get a vegan lasagna recipe."
CONVERSATION = [
    {"role": "user", "content": "got a vegan lasagna recipe?"},
    {"role": "assistant", "content": "Sure! Do you want it gluten-free as well?"},
    {"role": "user", "content": "no, just quick, under an hour"},
    {"role": "assistant", "content": "Here is one that takes 50 minutes: ..."},
]


def test_prompt_ids_equal_the_tokenizers_own_chat_template(tiny_tokenizer):
    assert tiny_tokenizer.chat_template == USERLM_CHAT_TEMPLATE
    for upto in range(len(CONVERSATION) + 1):
        messages = [{"role": "system", "content": INTENT}] + CONVERSATION[:upto]
        expected = tiny_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert user_prompt_ids(tiny_tokenizer, INTENT, CONVERSATION[:upto]) == list(expected)


def test_text_renderer_matches_the_template_for_http_prompts(tiny_tokenizer):
    messages = user_view(INTENT, CONVERSATION)
    assert render_userlm(messages) == tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert user_prompt_text(INTENT, CONVERSATION).endswith("<|start_header_id|>user<|end_header_id|>")


def test_user_view_puts_the_intent_first_and_keeps_roles():
    view = user_view(INTENT, CONVERSATION)
    assert view[0] == {"role": "system", "content": INTENT}
    assert [m["role"] for m in view[1:]] == ["user", "assistant", "user", "assistant"]
    assert user_view(None, CONVERSATION) == assistant_view(CONVERSATION)


def test_flipped_view_swaps_roles_for_prompted_chat_models():
    assert [m["role"] for m in flipped_view(CONVERSATION)] == ["assistant", "user", "assistant", "user"]
    assert flipped_view(CONVERSATION)[0]["content"] == CONVERSATION[0]["content"]


def test_training_targets_are_exactly_the_user_turns_and_the_end(tiny_tokenizer):
    ids, mask = training_ids(tiny_tokenizer, INTENT, CONVERSATION)
    assert len(ids) == len(mask)
    targets = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert targets == (
        "\ngot a vegan lasagna recipe?<|eot_id|>\nno, just quick, under an hour<|eot_id|>\n"
        f"{END_OF_CONVERSATION}<|eot_id|>"
    )
    # each target follows exactly the prompt simulation feeds the model
    first_target = mask.index(True)
    assert ids[:first_target] == user_prompt_ids(tiny_tokenizer, INTENT, [])


def test_message_text_that_spells_a_control_token_stays_text(tiny_tokenizer):
    """A user who typed ``<|endconversation|>`` or ``<|eot_id|>`` mid-turn: in prompts and in
    training targets that text is its characters, never the token, so training data cannot teach
    the model to end a turn or the conversation mid-text; the deliberate end target still is the
    token, and text without such spellings tokenizes exactly as before."""
    tok = tiny_tokenizer
    end, eot = tok.convert_tokens_to_ids(END_OF_CONVERSATION), tok.convert_tokens_to_ids("<|eot_id|>")
    typed = [
        {"role": "user", "content": f"what does {END_OF_CONVERSATION} mean? and <|eot_id|> too"},
        {"role": "assistant", "content": "They are <|eot_id|> control tokens."},
    ]
    ids, mask = training_ids(tok, INTENT, typed)
    assert ids.count(end) == 1 and mask[ids.index(end)]  # only the final, deliberate end target
    targets = [i for i, m in zip(ids, mask) if m]
    assert targets.count(eot) == 2  # each target turn's own closing token, none from the text
    assert tok.decode(targets) == (f"\nwhat does {END_OF_CONVERSATION} mean? and <|eot_id|> too<|eot_id|>\n"
                                   f"{END_OF_CONVERSATION}<|eot_id|>")
    prompt = user_prompt_ids(tok, INTENT, typed)
    assert end not in prompt
    assert prompt.count(eot) == 3  # the system, user and assistant messages' own
    assert tok.decode(prompt) == tok.apply_chat_template(user_view(INTENT, typed), tokenize=False)
    # an ordinary conversation: the same ids as the tokenizer's own template
    assert user_prompt_ids(tok, INTENT, CONVERSATION) == list(
        tok.apply_chat_template(user_view(INTENT, CONVERSATION), tokenize=True, return_dict=False))


def test_prompts_are_filled_in_one_pass_so_conversation_text_cannot_inject_a_placeholder():
    from userlm.prompts import fill_prompt

    judged = fill_prompt("role_judge.txt", question="What is {transcript}?", transcript="USER: hi")
    assert "What is {transcript}?" in judged and judged.count("USER: hi") == 1
    from userlm.render import prompted_user_view

    view = prompted_user_view("Plan {ending} a trip", [], allow_end=False)
    assert "Plan {ending} a trip" in view[0]["content"] and "{ending}" not in view[0]["content"].replace("Plan {ending} a trip", "")
