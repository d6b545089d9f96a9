"""Faults caught per user turn (userlm.faults): every detector on real turns that have and lack
the fault, the record of every simulation carrying them, and faults as guardrails."""

from __future__ import annotations

import asyncio
import json

import pytest

from userlm.conversation import read_conversations
from userlm.errors import UserError
from userlm.faults import (
    FAULTS,
    TurnContext,
    degenerate,
    detect,
    intent_dump,
    language_switch,
    parse_fault_names,
    premature_end,
    reasoning_leak,
    role_inversion,
)
from userlm.guardrails import GuardrailConfig
from userlm.intents import Intent
from userlm.models.doubles.scripted import ScriptedAssistant, ScriptedUser
from userlm.prepare.ingest import conversations_from
from userlm.simulation import RunSettings, simulate
from userlm.user import FaultPolicy, SimulatedUser

ARENA = "simulator-arena/document_creation_annotations_for_benchmarking.json"


@pytest.fixture(scope="module")
def arena(shared_data):
    path = shared_data(ARENA)
    return list(conversations_from(str(path))), json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def oasst_messages(shared_data):
    out: list[tuple[str, str]] = []

    def walk(message):
        out.append((message["role"], message["text"]))
        for reply in message.get("replies", []):
            walk(reply)

    for line in shared_data("oasst/en_100_tree.jsonl").read_text(encoding="utf-8").splitlines():
        walk(json.loads(line)["prompt"])
    return out


def rate(check, texts) -> float:
    texts = list(texts)
    return sum(1 for t in texts if check(t)) / len(texts)


def test_role_inversion_separates_real_people_from_real_assistants(arena, oasst_messages):
    convs, _ = arena
    people = [m.content for c in convs for m in c.user_turns()]
    replies = [m.content for c in convs for m in c.messages if m.role == "assistant"]
    assert rate(role_inversion, people) == 0.0  # 349 real people's turns: none reads as the assistant's
    assert rate(role_inversion, replies) > 0.4  # real assistant replies, said by a user, are caught
    prompters = [t for r, t in oasst_messages if r == "prompter"]
    assistants = [t for r, t in oasst_messages if r == "assistant"]
    assert rate(role_inversion, prompters) < 0.01 and rate(role_inversion, assistants) > 0.1
    assert role_inversion("How can I help you today?") and not role_inversion("Can you help me plan a trip?")


def test_reasoning_leak_on_real_turns(arena):
    convs, _ = arena
    people = [m.content for c in convs for m in c.user_turns()]
    assert rate(reasoning_leak, people) == 0.0
    leaked = [f"<think>The intent says I should ask about this.</think> {t}" for t in people[:50]]
    assert rate(reasoning_leak, leaked) == 1.0
    spoken = [f"{t} (As the simulated user, I'll keep my instructions hidden.)" for t in people[:50]]
    assert rate(reasoning_leak, spoken) == 1.0


def test_intent_dump_catches_a_pasted_intent_and_not_real_first_turns(arena):
    convs, raw = arena
    intents = [r["intent"] for r in raw]
    long_enough = [i for i in intents if len({w for w in i.lower().split() if len(w) > 3}) >= 8]
    assert rate(lambda i: intent_dump(i, i), long_enough) > 0.9  # the intent restated whole
    firsts = [(c.user_turns()[0].content, r["intent"]) for c, r in zip(convs, raw)]
    assert sum(intent_dump(t, i) for t, i in firsts) <= 1  # real people open without restating it (1 of 51 does)


def test_premature_end_against_the_details_real_people_gave(arena):
    convs, _ = arena

    def flagged(turns_kept) -> int:
        return sum(premature_end(TurnContext(c.intent, [m.content for m in c.user_turns()][:turns_kept(c)],
                                             tuple(c.metadata["required_details"]))) for c in convs)

    assert all(c.metadata["required_details"] for c in convs)
    assert flagged(lambda c: len(c.user_turns())) <= 8  # real people ending where they did: 6 of 51 flagged
    assert flagged(lambda c: 1) >= 30  # the same people ending after their first turn: most are flagged
    assert detect(None, ended=True, context=TurnContext("x", [])) == ["premature_end"]  # no details: before any turn


def test_language_switch_on_real_turns(arena):
    convs, _ = arena
    pairs = [(m.content, TurnContext(c.intent, [x.content for x in c.user_turns()[:i]])) for c in convs
             for i, m in enumerate(c.user_turns())]
    assert sum(language_switch(t, ctx) for t, ctx in pairs) == 0
    intent = convs[0].intent
    assert language_switch("Привет, помоги мне написать письмо другу.", TurnContext(intent))
    assert language_switch("友達への謝罪の手紙を書きたいです。", TurnContext(intent))
    assert not language_switch("Hola, quiero escribir una carta.", TurnContext(intent))  # the same script: not caught (documented)


def test_degenerate_turns(arena):
    convs, _ = arena
    people = [m.content for c in convs for m in c.user_turns()]
    replies = [m.content for c in convs for m in c.messages if m.role == "assistant"]
    assert rate(degenerate, people) == 0.0 and rate(degenerate, replies) == 0.0  # long real documents repeat phrases too
    # a model that degenerates loops until its token budget: the loop is most of the turn
    looping = [t + " " + " ".join(t.split()[-3:] * max(10, len(t.split()) // 3)) for t in people if len(t.split()) >= 3]
    assert rate(degenerate, looping) == 1.0
    assert degenerate("ok ... ... ... ... !!!") and degenerate("sure " + "x" * 40)


def test_fault_names_from_a_flag():
    assert parse_fault_names("role_inversion, degenerate") == ("role_inversion", "degenerate")
    with pytest.raises(UserError, match="--reject-faults: unknown fault 'rude'"):
        parse_fault_names("rude")


def test_every_user_message_of_a_simulation_records_its_faults(tmp_path):
    user = SimulatedUser(ScriptedUser(["Can you help me write an apology letter to my friend?",
                                       "How can I help you today? I'd be happy to help.", "Thanks, that works."]),
                         GuardrailConfig(min_turns=1, first_words=()))
    out = tmp_path / "run.jsonl"
    simulate([Intent("a", "You want to write an apology letter to a friend.")], user, ScriptedAssistant(["Sure, tell me more."]),
             out=str(out), settings=RunSettings(max_turns=5), progress=False)
    conv = read_conversations(out)[0]
    faults = [m.faults for m in conv.user_turns()]
    assert faults == [[], ["role_inversion"], []]
    assert conv.final_turn is not None and conv.final_turn.faults == []  # ended after its details: clean
    from userlm.cli.show import format_conversation

    assert "faults: role_inversion" in format_conversation(conv)


def test_rejected_faults_are_redrafted_and_the_refusal_says_which(tmp_path):
    script = ScriptedUser([["As an AI language model, I can write that.", "I need an apology letter for my friend."]])
    user = SimulatedUser(script, GuardrailConfig(min_turns=5, first_words=()), FaultPolicy(reject=("role_inversion",)))
    turn = asyncio.run(user.next_turn("You want an apology letter.", []))
    assert turn.text == "I need an apology letter for my friend." and turn.faults == []
    assert [r.reason for r in turn.rejected] == ["fault:role_inversion"]
    kept = SimulatedUser(script, GuardrailConfig(min_turns=5, first_words=()))
    assert asyncio.run(kept.next_turn("You want an apology letter.", [])).faults == ["role_inversion"]


def test_a_judge_adds_its_verdicts(tmp_path):
    class Judge:
        name = "judge"

        def __init__(self) -> None:
            self.asked: list[str] = []

        async def reply(self, messages, *, seed=None):
            self.asked.append(messages[-1]["content"])
            from userlm.models.base import ChatReply

            return ChatReply('["intent_dump", "not_a_fault"]', prompt_tokens=len(messages[-1]["content"]), completion_tokens=9)

    judge = Judge()
    user = SimulatedUser(ScriptedUser(["Could you help with a letter?", "And a shorter one?"]), GuardrailConfig(min_turns=5, first_words=()),
                         FaultPolicy(judge=judge))
    turn = asyncio.run(user.next_turn("You want an apology letter.", []))
    assert turn.faults == ["intent_dump"]
    assert "Could you help with a letter?" in judge.asked[0] and all(name in judge.asked[0] for name in FAULTS)
    assert (turn.judged.calls, turn.judged.prompt_tokens, turn.judged.completion_tokens) == (1, len(judge.asked[0]), 9)
    # in a run, the judge's tokens are a side of their own in every record, and in the run's totals
    from userlm.models.doubles.scripted import ScriptedAssistant
    from userlm.simulation import RunSettings, simulate

    judge.asked.clear()
    run = simulate(["You want an apology letter."], user, ScriptedAssistant(["Sure."]), settings=RunSettings(max_turns=2), progress=False)
    [conv] = run.conversations
    assert conv.usage["fault_judge"].calls == len(judge.asked) == 2
    assert conv.usage["fault_judge"].prompt_tokens == sum(map(len, judge.asked)) and run.tokens["fault_judge"].completion_tokens == 18


def test_the_cli_refuses_an_unknown_fault_in_one_sentence(tmp_path, intents_file):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "userlm", "simulate", "--intents", str(intents_file), "--user", "scripted:x.json",
                           "--assistant", "scripted:y.json", "--out", str(tmp_path / "o.jsonl"), "--reject-faults", "rude"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "--reject-faults" in done.stderr and "unknown fault 'rude'; the faults are role_inversion" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_resumed_with_other_fault_settings_is_refused(tmp_path):
    intents = [Intent("a", "You want to write an apology letter to a friend."), Intent("b", "You want a cake recipe.")]
    out = tmp_path / "run.jsonl"
    user = SimulatedUser(ScriptedUser(["Can you help me with this, please?"]), GuardrailConfig(min_turns=1, first_words=()))
    simulate(intents[:1], user, ScriptedAssistant(["Sure."]), out=str(out), settings=RunSettings(max_turns=3), progress=False)
    strict = SimulatedUser(user.model, user.guardrails, FaultPolicy(reject=("role_inversion",)))
    with pytest.raises(UserError, match="faults"):
        simulate(intents, strict, ScriptedAssistant(["Sure."]), out=str(out), settings=RunSettings(max_turns=3), progress=False)
    assert len(read_conversations(out)) == 1  # nothing added, nothing lost


def test_chat_shows_a_turns_faults(capsys):
    from userlm.cli.chat import _show
    from userlm.user import UserTurn

    _show(None, UserTurn(text="How can I help you today?", faults=["role_inversion"]))
    shown = capsys.readouterr()
    assert "user> How can I help you today?" in shown.out and "[faults: role_inversion]" in shown.err
