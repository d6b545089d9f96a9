"""The simulation runner with scripted users and assistants: end reasons, records, resume."""

from __future__ import annotations

import asyncio
import json

import pytest

import userlm
from userlm.errors import ConfigurationError, UserError
from userlm.guardrails import GuardrailConfig
from userlm.intents import Intent
from userlm.models.doubles.scripted import ScriptedAssistant, ScriptedUser
from userlm.models.prompted import PromptedUser
from userlm.simulation import RunSettings

INTENTS = [Intent("a", "You want a vegan lasagna recipe.", {"topic": "food", "level": 2}), Intent("b", "You want to plan a trip.")]
TURNS = ["got a vegan lasagna recipe?", "anything quicker than that?", "what about the sauce then?", "thanks, that works"]


def run(user, assistant=None, **settings):
    assistant = assistant or ScriptedAssistant(["Sure, here it is.", "Another option."])
    return userlm.simulate(INTENTS, user, assistant, settings=RunSettings(**settings), progress=False)


def test_conversations_run_to_max_turns_and_carry_metadata():
    summary = run(userlm.SimulatedUser(ScriptedUser(TURNS)), samples=2, max_turns=3)
    assert [c.id for c in summary.conversations] == ["a#0", "a#1", "b#0", "b#1"]
    conv = summary.conversations[0]
    assert conv.end_reason == "max_turns"
    assert [m.role for m in conv.messages] == ["user", "assistant"] * 3
    assert [m.content for m in conv.user_turns()] == TURNS[:3]
    assert conv.metadata == {"topic": "food", "level": 2}
    assert conv.settings["guardrails"]["max_words"] == 25
    assert conv.usage["user"].calls == 3 and conv.usage["assistant"].calls == 3
    assert conv.seed != summary.conversations[1].seed  # each sample its own seed
    # its repr is one line, not every conversation (asyncio formats a run's result when its loop closes)
    assert repr(summary) == "RunSummary(out=None, total=4, skipped=0, written=4, end_reasons={'max_turns': 4}, conversations=[4])"


def test_refused_drafts_are_recorded_and_resampled():
    script = [["I want lasagna please", "short", "got a vegan lasagna recipe?"], "anything quicker than that?"]
    conv = run(userlm.SimulatedUser(ScriptedUser(script)), max_turns=2).conversations[0]
    first = conv.messages[0]
    assert first.content == "got a vegan lasagna recipe?"
    assert first.attempts == 3
    assert [(r.draft, r.reason) for r in first.rejected] == [("I want lasagna please", "first_word"), ("short", "too_short")]


def test_guardrails_give_up_after_max_attempts():
    user = userlm.SimulatedUser(ScriptedUser([["Here it is", "I do not know"]]), GuardrailConfig(max_attempts=4))
    conv = run(user).conversations[0]
    assert conv.end_reason == "guardrail_exhausted"
    assert conv.messages == []
    assert conv.final_turn.attempts == 4
    assert [r.reason for r in conv.final_turn.rejected] == ["first_word"] * 4


def test_premature_end_is_refused_and_allowed_after_min_turns():
    script = TURNS[:2]  # the scripted user ends after two turns
    never = run(userlm.SimulatedUser(ScriptedUser(script), GuardrailConfig(max_attempts=2)), max_turns=5).conversations[0]
    assert never.end_reason == "guardrail_exhausted"
    assert [r.reason for r in never.final_turn.rejected] == ["premature_end", "premature_end"]
    allowed = run(userlm.SimulatedUser(ScriptedUser(script), GuardrailConfig(min_turns=2)), max_turns=5).conversations[0]
    assert allowed.end_reason == "user_ended"
    assert len(allowed.user_turns()) == 2
    assert allowed.final_turn.content == "<|endconversation|>"


def test_failures_are_recorded_and_the_run_goes_on():
    def flaky(messages):
        if "trip" in messages[0]["content"] or len(messages) > 1:
            raise RuntimeError("assistant crashed")
        return "fine"

    user = userlm.SimulatedUser(ScriptedUser(["plan a cheap trip", "and then what"]))
    summary = userlm.simulate(INTENTS, user, userlm.load_assistant(flaky), settings=RunSettings(max_turns=2), progress=False)
    assert [c.end_reason for c in summary.conversations] == ["assistant_error", "assistant_error"]
    assert summary.conversations[0].error == "RuntimeError: assistant crashed"

    class BrokenUser:
        name = "broken"

        async def draft(self, request):
            raise ValueError("model exploded")

    conv = run(userlm.SimulatedUser(BrokenUser())).conversations[0]
    assert (conv.end_reason, conv.error) == ("user_error", "ValueError: model exploded")


def test_configuration_errors_abort_the_run():
    class Unauthorised:
        name = "nokey"

        async def draft(self, request):
            raise ConfigurationError("the server refused the key")

    with pytest.raises(ConfigurationError):
        run(userlm.SimulatedUser(Unauthorised()))


def test_async_and_sync_python_assistants_see_the_conversation():
    seen = []

    async def async_assistant(messages):
        seen.append([m["role"] for m in messages])
        await asyncio.sleep(0)
        return f"reply {len(messages)}"

    user = userlm.SimulatedUser(ScriptedUser(TURNS))
    conv = userlm.simulate(INTENTS[:1], user, userlm.load_assistant(async_assistant), settings=RunSettings(max_turns=2), progress=False).conversations[0]
    assert seen == [["user"], ["user", "assistant", "user"]]
    assert [m.content for m in conv.messages if m.role == "assistant"] == ["reply 1", "reply 3"]


def test_resume_skips_finished_conversations_and_retry_errors_redoes_failures(tmp_path):
    out = tmp_path / "run.jsonl"
    calls = []

    def assistant(messages):
        calls.append(messages[0]["content"])
        if len(calls) == 1:
            raise RuntimeError("transient")
        return "ok then"

    user = userlm.SimulatedUser(ScriptedUser(TURNS))
    kw = dict(out=out, progress=False)
    first = userlm.simulate(INTENTS, user, userlm.load_assistant(assistant), settings=RunSettings(max_turns=1, concurrency=1), **kw)
    assert first.written == 2 and sorted(first.end_reasons.elements()) == ["assistant_error", "max_turns"]
    with pytest.raises(UserError, match="was made with --samples 1, this run has --samples 2; pass --extend"):
        userlm.simulate(INTENTS, user, userlm.load_assistant(assistant), settings=RunSettings(max_turns=1, samples=2), **kw)
    again = userlm.simulate(INTENTS, user, userlm.load_assistant(assistant), settings=RunSettings(max_turns=1, samples=2, extend=True), **kw)
    assert (again.skipped, again.written) == (2, 2)
    retry = userlm.simulate(INTENTS, user, userlm.load_assistant(assistant),
                            settings=RunSettings(max_turns=1, samples=2, retry_errors=True, extend=True), **kw)
    assert (retry.skipped, retry.written) == (3, 1)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["a#0", "a#1", "b#0", "b#1"]
    assert all(r["error"] is None for r in records)


def test_resume_refuses_a_file_from_another_pair_of_models(tmp_path):
    out = tmp_path / "run.jsonl"
    user = userlm.SimulatedUser(ScriptedUser(TURNS))
    userlm.simulate(INTENTS, user, ScriptedAssistant(["x y z"], name="one"), out=out, progress=False)
    with pytest.raises(UserError, match="made with assistant = one, but this run has two"):
        userlm.simulate(INTENTS, user, ScriptedAssistant(["x y z"], name="two"), out=out, progress=False)


def test_prompted_user_flips_roles_and_states_the_intent():
    captured = []

    def chat_model(messages):
        captured.append(messages)
        return "hmm can you make it spicier?" if len(captured) > 1 else "got a vegan lasagna recipe?"

    user = userlm.SimulatedUser(PromptedUser(userlm.load_assistant(chat_model)))
    assistant = ScriptedAssistant(["Sure, here it is."])
    conv = userlm.simulate(INTENTS[:1], user, assistant, settings=RunSettings(max_turns=2), progress=False).conversations[0]
    assert [m.content for m in conv.user_turns()] == ["got a vegan lasagna recipe?", "hmm can you make it spicier?"]
    system, start, *rest = captured[1]
    assert system["role"] == "system" and INTENTS[0].text in system["content"]
    assert "NOT the assistant" in system["content"]
    assert start["role"] == "user"
    assert [m["role"] for m in rest] == ["assistant", "user"]  # our user turn is the model's own


def test_a_session_drives_the_user_turn_by_turn():
    session = userlm.SimulatedUser(ScriptedUser(TURNS[:2]), GuardrailConfig(min_turns=1)).session("You want lasagna.")
    assert session.step() == TURNS[0]
    assert session.step("Here you go.") == TURNS[1]
    assert session.step("Anything else?") is None
    assert session.over and session.last.ended
    assert [m.role for m in session.messages] == ["user", "assistant", "user", "assistant"]
    with pytest.raises(RuntimeError):
        session.step("more?")


def test_the_retrieval_assistant_answers_with_the_closest_real_reply_cut_to_its_budget():
    from userlm.conversation import Conversation, Message
    from userlm.models.doubles.retrieval import RetrievalAssistant

    logs = [Conversation(id=f"{k}#0", intent_id=str(k), intent=None,
                         messages=[Message(role="user", content=question), Message(role="assistant", content=answer)])
            for k, (question, answer) in enumerate([("how do I bake bread at home", "Mix flour,\nwater and yeast, then bake it."),
                                                    ("what is the capital of France", "Paris.")])]
    ask = lambda assistant, text: asyncio.run(assistant.reply([{"role": "user", "content": text}])).text
    assert ask(RetrievalAssistant(logs), "tell me the capital of France") == "Paris."
    assert ask(RetrievalAssistant(logs), "bread at home?") == "Mix flour,\nwater and yeast, then bake it."
    assert ask(RetrievalAssistant(logs, max_words=3), "bread at home?") == "Mix flour,\nwater"
    long = logs[:1] + [Conversation(id="2#0", intent_id="2", intent=None, messages=[
        Message(role="user", content="a long answer please"), Message(role="assistant", content="word " * 150 + "x" * 5000)])]
    assert ask(RetrievalAssistant(long, max_words=200), "a long answer please").endswith("x" * 5000)  # under budget: whole, at once


class _SamplingScript(ScriptedUser):
    """A scripted user that states sampling settings, as every sampling model does."""

    def __init__(self, turns, sampling):
        super().__init__(turns, name="scripted:sampling")
        self.sampling = sampling


def test_a_library_run_records_the_models_sampling_and_resume_catches_a_change(tmp_path):
    """The run record comes from the models, not the command line: a Python call that resumes a
    file with another temperature is stopped in one sentence, as the command would be."""
    from userlm.models.base import SamplingSettings

    out = tmp_path / "run.jsonl"
    intents = [Intent(id=f"i{k}", text=f"You want help with chore {k} today.") for k in range(2)]
    assistant = ScriptedAssistant(["Sure, tell me more."])

    def user(temperature):
        return userlm.SimulatedUser(_SamplingScript(["can you help me with my chore?"], SamplingSettings(temperature, 0.8, 64)),
                                    GuardrailConfig())

    first = userlm.simulate(intents[:1], user(1.0), assistant, out=out, progress=False)
    assert first.conversations[0].settings["user_sampling"] == {"temperature": 1.0, "top_p": 0.8, "max_new_tokens": 64}
    assert "assistant_sampling" not in first.conversations[0].settings  # a script samples nothing
    with pytest.raises(UserError, match=r"made with sampling = .*temperature.*1\.0.*but this run has .*0\.5"):
        userlm.simulate(intents, user(0.5), assistant, out=out, progress=False)
    again = userlm.simulate(intents, user(1.0), assistant, out=out, progress=False)
    assert (again.skipped, again.written) == (1, 1)


def test_files_written_before_the_models_stated_their_sampling_still_resume(tmp_path):
    """Older records carry the command line's sampling for every side, a script's too; they resume."""
    out = tmp_path / "run.jsonl"
    intents = [Intent(id=f"i{k}", text=f"You want help with chore {k} today.") for k in range(2)]
    user = userlm.SimulatedUser(ScriptedUser(["can you help me with my chore?"]), GuardrailConfig())
    assistant = ScriptedAssistant(["Sure, tell me more."])
    old = {side: {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 512} for side in ("user_sampling", "assistant_sampling")}
    userlm.simulate(intents[:1], user, assistant, out=out, generation=old, progress=False)
    resumed = userlm.simulate(intents, user, assistant, out=out, progress=False)
    assert (resumed.skipped, resumed.written) == (1, 1)
