"""``userlm eval-user``: each measure against a case computed by hand or by a second route, on
tiny models and the shared Open-Assistant threads."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from userlm.conversation import Conversation, Message
from userlm.evaluation.simulators.parts import Simulator, UserEvalSettings, conversation_figures, perplexity_figure, termination_part
from userlm.evaluation.simulators.scenarios import Question, load_questions, role_rule_check
from userlm.models.base import UserDraft, UserTurnRequest
from userlm.render import END_OF_CONVERSATION, user_prompt_ids


@pytest.fixture(scope="module")
def oasst_threads(shared_data):
    from userlm.prepare.ingest import conversations_from

    return list(conversations_from(str(shared_data("oasst/en_100_tree.jsonl"))))


@pytest.fixture(scope="module")
def tiny_user(tiny_user_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_user_dir).eval(), AutoTokenizer.from_pretrained(tiny_user_dir)


def _full_logprobs(model, ids):
    import torch

    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_perplexity_and_end_probabilities_match_a_direct_computation(tiny_user, oasst_threads):
    """Batched, chunked scoring with logits only at scored positions equals scoring each prefix with
    full logits: the per-conversation NLL of the user turns, and P(end) after each assistant reply
    read as P(<|endconversation|> | prompt + the newline that opens a user turn)."""
    from userlm.evaluation.simulators.perplexity import held_out_scores
    from userlm.render import training_ids

    model, tok = tiny_user
    convs = oasst_threads[:12]
    batched = held_out_scores(model, tok, convs, use_intent=False, max_batch_tokens=2000)
    chunked = held_out_scores(model, tok, convs, use_intent=False, chunk_tokens=48, max_batch_tokens=100)
    end_id = tok.convert_tokens_to_ids(END_OF_CONVERSATION)
    newline = tok.encode("\n", add_special_tokens=False)
    points = iter(batched.end_points)
    for k, conv in enumerate(convs):
        ids, mask = training_ids(tok, None, conv.messages)
        logp = _full_logprobs(model, ids)
        nll = -sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1) if mask[t + 1])
        assert batched.nll[k] == pytest.approx(nll, rel=1e-4)
        assert chunked.nll[k] == pytest.approx(nll, rel=1e-4)
        assert batched.tokens[k] == sum(mask[1:])
        for i, m in enumerate(conv.messages + [None]):
            if i == 0 or conv.messages[i - 1].role != "assistant" or (m is not None and m.role != "user"):
                continue
            point = next(points)
            prompt = user_prompt_ids(tok, None, conv.messages[:i]) + newline
            direct = math.exp(float(_full_logprobs(model, prompt)[-1, end_id]))
            assert point.prob == pytest.approx(direct, rel=1e-3)
            assert point.ended == (m is None)
    assert next(points, None) is None
    assert [p.prob for p in chunked.end_points] == pytest.approx([p.prob for p in batched.end_points], rel=1e-4)
    assert sum(p.ended for p in batched.end_points) == len(convs)  # every thread ends on an assistant reply


def test_flipped_prompt_scores_the_users_turns_as_the_chat_models_own(tiny_assistant_dir, oasst_threads):
    """An instruction-tuned model is scored on the real user's turns written as its assistant turns
    after the role-play prompt; the end probability is that of the whole reply <|endconversation|>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from userlm.evaluation.simulators.perplexity import flipped_sequences, held_out_scores
    from userlm.render import prompted_user_view, template_ids

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_assistant_dir).eval(), AutoTokenizer.from_pretrained(tiny_assistant_dir)
    conv = next(c for c in oasst_threads if len(c.messages) >= 4)
    turns = flipped_sequences(tok, conv, 0, use_intent=False)[0]
    targets = tok.decode([t for t, m in zip(turns.ids, turns.mask) if m])
    for m in conv.messages:
        assert (m.content.strip()[:40] in targets) == (m.role == "user")
    assert END_OF_CONVERSATION in targets

    scores = held_out_scores(model, tok, [conv], fmt="flipped", use_intent=False)
    assert len(scores.end_points) == len(conv.messages) // 2
    chat = prompted_user_view(None, [m.chat() for m in conv.messages[:2]], allow_end=True)
    # the marker is the text a prompted user writes (its drafts are read as text), so it is scored
    # as text, never as the tokenizer's special token of the same spelling
    prompt = template_ids(tok, chat, template=tok.chat_template)
    whole = template_ids(tok, chat + [{"role": "assistant", "content": END_OF_CONVERSATION}], template=tok.chat_template, opened=False)
    assert tok.convert_tokens_to_ids(END_OF_CONVERSATION) not in whole
    logp = _full_logprobs(model, whole)
    direct = math.exp(sum(float(logp[t - 1, whole[t]]) for t in range(len(prompt), len(whole))))
    assert scores.end_points[0].prob == pytest.approx(direct, rel=1e-3)


class _MarkerUser:
    """Ends (P = 1) exactly when the last assistant reply says goodbye; a known answer."""

    def __init__(self, rule):
        self.rule, self.name = rule, "rule"

    async def draft(self, request: UserTurnRequest) -> UserDraft:
        ends = self.rule(request.messages[-1]["content"])
        return UserDraft(text="" if ends else "ok, and then?", ended=ends)


def test_termination_f1_where_the_answer_is_known(oasst_threads):
    """Real threads whose last assistant reply gains a goodbye: a simulator that ends on goodbyes is
    perfect, one that never ends scores 0, one that always ends has precision = share of ends."""
    convs = []
    for c in oasst_threads[:60]:
        messages = [m.model_copy() for m in c.messages]
        messages[-1] = Message(role="assistant", content=messages[-1].content + "\nGoodbye!")
        convs.append(c.model_copy(update={"messages": messages}))
    settings = UserEvalSettings(end_samples=2, resamples=200)

    def run(rule):
        return asyncio.run(termination_part(Simulator("rule", _MarkerUser(rule)), convs, {}, settings))["end_f1"]

    perfect = run(lambda text: "Goodbye!" in text)
    assert (perfect["value"], perfect["precision"], perfect["recall"]) == (1.0, 1.0, 1.0)
    assert perfect["low"] == perfect["high"] == 1.0
    points = sum(len(c.messages) // 2 for c in convs)
    assert perfect["n"] == points and perfect["positives"] == len(convs)
    always = run(lambda text: True)
    share = len(convs) / points
    assert always["precision"] == pytest.approx(share)
    assert always["value"] == pytest.approx(2 * share / (1 + share)) == pytest.approx(always["always_end_f1"])
    never = run(lambda text: False)
    assert never["value"] == 0.0


def test_first_turn_and_intent_measures_by_hand():
    def conv(i, intent, *turns):
        messages = []
        for t in turns:
            messages += [Message(role="user", content=t), Message(role="assistant", content="ok")]
        return Conversation(id=f"c{i}", intent_id=f"c{i}", intent=intent, messages=messages)

    convs = [conv(0, "bake sourdough bread", "how do i bake bread", "sourdough starter tips"),
             conv(1, "fix python keyerror", "my script crashes")]
    figs = conversation_figures(convs, UserEvalSettings(resamples=200))
    # unigram sets {how, do, i, bake, bread} and {my, script, crashes}: Jaccard 0 -> diversity 100
    assert figs["first_turn_diversity"]["value"] == 100.0
    # content words: intent 0 {bake, sourdough, bread}; turns reveal 2/3 then 1/3; intent 1 {fix, python, keyerror}: 0
    assert figs["intent_overlap_first"]["value"] == pytest.approx((2 / 3 + 0) / 2)
    assert figs["intent_overlap_turn"]["value"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert figs["intent_overlap_by_turn"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(1 / 3)}
    assert figs["distinct_1"]["value"] == pytest.approx(8 / 8)


def test_perplexity_interval_resamples_conversations():
    fig = perplexity_figure([10.0, 20.0, 30.0], [10, 10, 10], UserEvalSettings(resamples=500))
    assert fig["value"] == pytest.approx(math.exp(2.0))
    assert math.exp(1.0) <= fig["low"] < fig["value"] < fig["high"] <= math.exp(3.0)


@pytest.mark.parametrize(("turn", "answered", "voice"), [
    ("is it the fridge or the cupboard? i really dont know", False, False),
    ("its the cupboard obviously", True, False),
    ("I think B", True, False),
    ("probably the refrigerator", True, False),
    ("I think a fridge is where you'd keep it but not sure, what do you say", False, False),
    ("Great question! The correct answer is refrigerator because it keeps milk cold.", True, True),
    ("no idea, thats why im asking you", False, False),
    ("As an AI language model I can help you with that.", False, True),
])
def test_role_rule_check(turn, answered, voice):
    q = Question("q", "Where would you keep milk?", ("cupboard", "refrigerator", "garage"), "refrigerator")
    check = role_rule_check(turn, q)
    assert (check.answered_itself, check.assistant_voice) == (answered, voice)
    assert check.adhered == (not answered and not voice)


def test_question_fixtures_and_a_clear_error_for_a_bad_file(tmp_path):
    mcq = load_questions("fixture:mcq")
    assert len(mcq) == 12 and all(q.answer in q.options for q in mcq)
    assert "B) refrigerator" in mcq[0].intent()
    assert all(not q.options for q in load_questions("fixture:open"))
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "1", "question": "x"}\n{"id": "2"}\n', encoding="utf-8")
    from userlm.errors import UserError

    with pytest.raises(UserError, match=r"q.jsonl:2: .*question"):
        load_questions(str(bad))


def test_local_detector_trained_on_real_text_and_served_over_http(tmp_path, oasst_threads):
    """The classifier learns to tell real user turns from assistant-style text (here the volunteers'
    assistant replies stand in for machine text); an HTTP detector service gives the same scores."""
    from userlm.evaluation.simulators.detectors import HTTPDetector, LocalDetector, train_detector

    human = list(dict.fromkeys(m.content for c in oasst_threads for m in c.messages if m.role == "user"))[:300]
    machine = list(dict.fromkeys(m.content for c in oasst_threads for m in c.messages if m.role == "assistant"))[:300]
    report = train_detector(human, machine, tmp_path / "det")
    assert report.accuracy > 0.8
    assert report.human_mean_on_test > report.machine_mean_on_test
    local = LocalDetector(tmp_path / "det")
    probe = ["whats the best way to learn guitar fast??", "Certainly! Here is a detailed, step-by-step overview of the main options."]
    scores = asyncio.run(local.human_likelihood(probe))
    assert scores[0] > scores[1]

    from tests.test_http_faults import json_service

    server, url = json_service(lambda texts: (200, json.dumps({"scores": asyncio.run(local.human_likelihood(texts))}).encode()))
    try:
        remote = HTTPDetector(url, batch=1)
        assert asyncio.run(remote.human_likelihood(probe)) == pytest.approx(scores)
    finally:
        server.shutdown()


JUDGE = '''
import json, os
def judge(messages):
    with open(os.environ["JUDGE_LOG"], "a") as f:
        f.write("call\\n")
    prompt = messages[-1]["content"]
    return "YES" if "stay" in prompt else "NO"
'''


def test_eval_user_command_end_to_end_and_resumes(tmp_path, tiny_user_dir, shared_data, monkeypatch):
    """Two simulators side by side on real held-out threads, with a judge and a local detector;
    running it again reuses every finished part and every judge answer."""
    from tests.test_cli import userlm_cli

    (tmp_path / "judge_mod.py").write_text(JUDGE, encoding="utf-8")
    log = tmp_path / "judge.log"
    env = {"JUDGE_LOG": str(log), "PYTHONPATH": str(tmp_path)}
    human = tmp_path / "human.txt"
    human.write_text("\n".join(json.loads(line) for line in shared_data("oasst/prompt_lottery_en_250_text.jsonl").read_text().splitlines()[:120]
                               if "\n" not in json.loads(line)), encoding="utf-8")
    machine = tmp_path / "machine.txt"
    machine.write_text("\n".join(f"Certainly! Here is a clear overview of topic {i}, with examples and a summary." for i in range(60)), encoding="utf-8")
    done = userlm_cli("train-detector", "--human", human, "--machine", machine, "--out", tmp_path / "det", env=env)
    assert done.returncode == 0, done.stderr
    assert "held-out accuracy" in done.stdout

    out = tmp_path / "eval"
    cmd = ["eval-user", "--user", f"hf:{tiny_user_dir}", "--user", "scripted:" + str(_script(tmp_path)),
           "--data", shared_data("oasst/en_100_tree.jsonl"), "--limit", "20", "--first-turns", "6", "--scenario-limit", "4",
           "--judge", "python:judge_mod:judge", "--detector", f"local:{tmp_path / 'det'}", "--user-max-tokens", "16",
           "--end-samples", "1", "--resamples", "100", "--no-progress", "--out", out]
    first = userlm_cli(*cmd, env=env)
    assert first.returncode == 0, first.stderr
    report = json.loads((out / "user_eval.json").read_text())
    local, scripted = report["simulators"]
    assert local["metrics"]["ppl_no_intent"]["value"] > 1 and local["metrics"]["ppl_no_intent"]["n"] == 20
    assert "skipped" in scripted["parts"]["alignment"] and "ppl_no_intent" not in scripted["metrics"]
    for sim in (local, scripted):
        m = sim["metrics"]
        assert m["end_f1"]["n"] == len(sim["parts"]["termination"]["points"]) > 20
        assert 0 <= m["naturalness"]["value"] <= 1
        assert m["first_turn_diversity"]["n"] == 6
        intent_items = sim["parts"]["intent"]["items"]
        assert len(intent_items) == 4 and all(i["adhered"] for i in intent_items if i["method"] == "judge")  # the judge says YES
        assert m["intent_adherence"]["value"] == pytest.approx(sum(bool(i["adhered"]) for i in intent_items) / 4)
        assert m["role_adherence"]["n"] == 8  # 4 multiple-choice questions by rule, 4 open ones by the judge
    roles = [i["method"] for i in scripted["parts"]["role"]["items"]]
    assert roles == ["rule"] * 4 + ["judge"] * 4
    assert scripted["metrics"]["role_adherence"]["value"] == 1.0  # "hmm not sure, can you just tell me?" names no option
    table = (out / "user_eval.md").read_text()
    assert f"`hf:{tiny_user_dir}`" in table and "real users (held-out)" in table and "(published)" in table
    calls = log.read_text().count("call")
    judged = sum(i["method"] == "judge" for s in (local, scripted) for part in ("role", "intent") for i in s["parts"][part]["items"])
    assert calls == judged >= 8  # one call per judged item; the scripted user's items alone make 8

    again = userlm_cli(*cmd, env=env)
    assert again.returncode == 0, again.stderr
    assert log.read_text().count("call") == calls
    assert "alignment ..." not in again.stderr
    assert json.loads((out / "user_eval.json").read_text())["simulators"] == report["simulators"]


def _script(tmp_path):
    path = tmp_path / "user_script.json"
    path.write_text(json.dumps(["hey so i need some help with this", "hmm not sure, can you just tell me?", "ok thanks a lot"]), encoding="utf-8")
    return path


def test_eval_user_rejects_bad_input_in_one_sentence(tmp_path, tiny_user_dir):
    from tests.test_cli import userlm_cli

    bad = tmp_path / "held.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n{oops\n', encoding="utf-8")
    done = userlm_cli("eval-user", "--user", f"hf:{tiny_user_dir}", "--data", bad, "--out", tmp_path / "e")
    assert done.returncode == 2
    assert f"{bad}:2" in done.stderr and "Traceback" not in done.stderr
    done = userlm_cli("eval-user", "--user", f"hf:{tiny_user_dir}", "--data", bad, "--parts", "alignment,vibes", "--out", tmp_path / "e")
    assert done.returncode == 2 and "vibes" in done.stderr
    assert not (tmp_path / "e" / "user_eval.json").exists()


def test_prism_rows_keep_the_users_turns_and_the_chosen_replies(tmp_path):
    from userlm.prepare.ingest import conversations_from

    row = {"conversation_id": "c1", "user_id": "u7", "opening_prompt": "hi", "conversation_history": [
        {"turn": 0, "role": "user", "content": "recommend a sci-fi book"},
        {"turn": 0, "role": "model", "content": "Try Dune.", "if_chosen": True},
        {"turn": 0, "role": "model", "content": "Try Neuromancer.", "if_chosen": False},
        {"turn": 1, "role": "user", "content": "something shorter?"},
        {"turn": 1, "role": "model", "content": "The Martian is brisk.", "if_chosen": True},
    ]}
    path = tmp_path / "prism.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (conv,) = conversations_from(str(path))
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "recommend a sci-fi book"), ("assistant", "Try Dune."), ("user", "something shorter?"), ("assistant", "The Martian is brisk.")]
    assert conv.metadata["group"] == "u7"


def test_public_question_sets_fail_clearly_when_not_downloaded(monkeypatch, tmp_path):
    from userlm.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UserError, match="commonsense_qa: cannot load tau/commonsense_qa"):
        load_questions("commonsense_qa")


def test_published_figures_file_fills_the_labelled_rows(tmp_path):
    from userlm.errors import UserError
    from userlm.evaluation.simulators.table import markdown
    from userlm.evaluation.tables import published_rows

    good = tmp_path / "pub.json"
    good.write_text(json.dumps({"source": "a paper", "rows": [{"simulator": "Model X", "metrics": {"end_f1": 12.3}}]}), encoding="utf-8")
    report = {"settings": {"held_out_conversations": 0, "intents": 0, "questions": 0, "assistant": "a", "judge": None, "detector": None},
              "simulators": [], "real_users": {"metrics": {}}, "published": published_rows(good)}
    row = next(line for line in markdown(report).splitlines() if "Model X" in line)
    assert row.startswith("| *Model X* (published) |") and "*12.3*" in row
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"metrics": {}}]}', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.json: expected"):
        published_rows(bad)


def _points(n_conversations: int, seed: int, informative: bool) -> list[dict]:
    """Termination points of ``n_conversations`` conversations of four replies each, the user
    ending after the last one; P(end) noisy, and unrelated to the truth unless ``informative``."""
    import random

    rng = random.Random(seed)
    points = []
    for c in range(n_conversations):
        for reply in range(4):
            ended = reply == 3
            prob = rng.random() * 0.5 + (0.5 if ended and informative else 0.0)
            points.append({"conversation": f"c{c}", "after_reply": reply, "ended": ended, "prob": prob})
    return points


def test_termination_f1_is_out_of_sample_and_the_in_sample_best_is_labelled():
    from userlm.evaluation.simulators.parts import termination_figure

    settings = UserEvalSettings(resamples=200)
    noise = termination_figure(_points(200, 1, informative=False), settings, "test")
    # tuned on the same points, pure noise looks better than chance; out of sample it does not
    assert noise["in_sample"]["f1"] > noise["value"]
    assert "same conversations" in noise["in_sample"]["label"]
    assert noise["folds"] == 5 and len(noise["fold_thresholds"]) == 5
    assert noise["threshold"] == sorted(noise["fold_thresholds"])[2]  # the advice is the folds' median
    signal = termination_figure(_points(200, 2, informative=True), settings, "test")
    assert signal["value"] > 0.95 and 0.5 <= signal["threshold"] < 0.6


def test_too_few_conversations_give_a_note_not_a_number():
    from userlm.evaluation.simulators.parts import termination_figure
    from userlm.evaluation.simulators.table import markdown

    few = termination_figure(_points(6, 3, informative=True), UserEvalSettings(resamples=50), "test")
    assert few["value"] is None and "too few conversations" in few["note"] and few["in_sample"]["f1"] == 1.0
    report = {"settings": {"held_out_conversations": 6, "intents": 0, "questions": 0, "assistant": "a", "judge": None, "detector": None},
              "simulators": [{"simulator": "m", "metrics": {"end_f1": few}, "missing": {"end_f1": few["note"]}}],
              "real_users": {"metrics": {}}, "published": {}}
    md = markdown(report)
    assert "--end-threshold" not in md and "no termination F1 and no threshold advice: too few conversations" in md
    row = next(line for line in md.splitlines() if line.startswith("| `m` |"))
    assert "100.0" not in row and "-[^" in row


def test_a_simulator_whose_every_draft_is_refused_gets_a_warning_not_a_best_score(tmp_path):
    from userlm.evaluation.simulators.evaluate import evaluate_users
    from userlm.intents import Intent
    from userlm.models.doubles.scripted import ScriptedUser

    intents = [Intent(id=f"i{k}", text=f"You are a user who wants help with chore number {k} at home today.") for k in range(4)]
    refused = Simulator("always-refused", ScriptedUser([["I want help."]], name="refused"))
    settings = UserEvalSettings(parts=("conversations",), resamples=50)
    report = asyncio.run(evaluate_users([refused], [], intents, tmp_path, settings=settings, progress=False, log=lambda *a: None))
    [sim] = report["simulators"]
    assert "intent_overlap_turn" not in sim["metrics"] and "first_turn_diversity" not in sim["metrics"]
    assert "none of the 4 simulated conversations is usable (4 guardrail_exhausted)" in sim["missing"]["intent_overlap_turn"]
    md = (tmp_path / "user_eval.md").read_text()
    assert "**Warning:** always-refused: none of the 4 simulated conversations" in md
    row = next(line for line in md.splitlines() if line.startswith("| `always-refused` |"))
    assert "0.0" not in row and "| - |" not in row  # every empty cell carries its footnote
    assert "[^1]:" in md


def test_conversations_that_end_in_failure_are_not_scored_and_say_so(tmp_path):
    """Two good turns, then every draft refused: a failed conversation, whatever its turns said."""
    from userlm.evaluation.simulators.evaluate import evaluate_users
    from userlm.intents import Intent
    from userlm.models.doubles.scripted import ScriptedUser

    intents = [Intent(id=f"i{k}", text=f"You are a user who wants help with chore number {k} at home today.") for k in range(3)]
    runs_dry = Simulator("runs-dry", ScriptedUser(["hey so i need some help with this", "ok thanks a lot for that"]))
    settings = UserEvalSettings(parts=("conversations",), resamples=50, max_turns=4)
    report = asyncio.run(evaluate_users([runs_dry], [], intents, tmp_path, settings=settings, progress=False, log=lambda *a: None))
    [sim] = report["simulators"]
    assert sim["parts"]["conversations"]["end_reasons"] == {"guardrail_exhausted": 3}
    assert "intent_overlap_turn" not in sim["metrics"]  # not the best possible 0.0
    assert "(3 guardrail_exhausted)" in sim["warnings"][0]


def test_the_papers_figures_are_shown_by_default():
    from userlm.evaluation.simulators.table import markdown
    from userlm.evaluation.tables import published_rows

    report = {"settings": {"held_out_conversations": 0, "intents": 0, "questions": 0, "assistant": "a", "judge": None, "detector": None},
              "simulators": [], "real_users": {"metrics": {}}, "published": published_rows()}
    md = markdown(report)
    row = next(line for line in md.splitlines() if line.startswith("| *UserLM-8b* (published)"))
    assert row.startswith("| *UserLM-8b* (published) | *4.33* | *5.6* | *94.55* |")  # Table 1's perplexities, then Table 2
    assert "transcribed from secondary summaries" in md and "not measured here" in md


def test_a_resumed_evaluation_refuses_parts_made_with_other_settings(tmp_path, oasst_threads):
    """Saved parts carry what made them; the same run again reuses them, another seed, temperature
    or data is one sentence instead of a table that mixes two set-ups."""
    from userlm.errors import UserError
    from userlm.evaluation.simulators.evaluate import evaluate_users
    from userlm.intents import Intent
    from userlm.models.base import SamplingSettings
    from userlm.models.doubles.scripted import ScriptedUser

    class Sampling(ScriptedUser):
        def __init__(self, temperature):
            super().__init__(["could you tell me more about that?", "and what else should I know?"], name="scripted:s")
            self.sampling = SamplingSettings(temperature, 0.8, 64)

    intents = [Intent(id=f"i{k}", text=f"You want help with chore {k} today.") for k in range(3)]

    def run(temperature=1.0, seed=0, data=oasst_threads[:6], replay_drafts=3):
        settings = UserEvalSettings(parts=("conversations",), seed=seed, resamples=50, replay_drafts=replay_drafts)
        return asyncio.run(evaluate_users([Simulator("scripted:s", Sampling(temperature))], data, intents, tmp_path, settings=settings,
                                          progress=False, log=lambda m: None))

    first = run()
    assert (tmp_path / "parts" / "scripted_s.settings.json").exists()
    assert run()["simulators"][0]["parts"] == first["simulators"][0]["parts"]  # resumed as it was
    for change, named in ((dict(temperature=0.5), "sampling"), (dict(seed=1), "seed"), (dict(data=oasst_threads[6:12]), "held-out"),
                          (dict(replay_drafts=2), "replay drafts")):
        with pytest.raises(UserError, match=f"holds parts of scripted:s made with {named}"):
            run(**change)
    # and a setting a saved part has but this run leaves at its default is named too
    path = tmp_path / "parts" / "scripted_s.settings.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "replay drafts": 2}))
    with pytest.raises(UserError, match="made with replay drafts = 2, but this run has the default"):
        run()


def test_every_part_records_its_tokens_by_side_and_the_table_sums_them(tmp_path):
    """The simulator's, the scenario assistant's and the judge's tokens, per part as the models
    reported them; a resumed evaluation asks the judge nothing and keeps the figures."""
    from userlm.conversation import read_conversations, token_totals
    from userlm.evaluation.simulators.evaluate import evaluate_users
    from userlm.evaluation.simulators.judge import CachedJudge
    from userlm.evaluation.simulators.table import markdown
    from userlm.intents import Intent
    from userlm.models.base import ChatReply
    from userlm.models.doubles.scripted import ScriptedUser

    class Judge:
        name = "judge:counting"

        async def reply(self, messages, *, seed=None, conversation=None):
            return ChatReply("YES", prompt_tokens=len(messages[-1]["content"]), completion_tokens=1)

    class Scenario:
        name = "scenario:counting"

        async def reply(self, messages, *, seed=None, conversation=None):
            return ChatReply("Let us talk about the weather instead.", prompt_tokens=7, completion_tokens=5)

    intents = [Intent(id=f"i{k}", text=f"You want help with chore {k} today.") for k in range(3)]
    questions = load_questions("fixture:open", limit=3)
    settings = UserEvalSettings(parts=("conversations", "role", "intent"), scenario_limit=3, resamples=50)
    cache = tmp_path / "judge.jsonl"

    def run():
        user = ScriptedUser(["could you tell me more about that?", "and what else should I know?"], name="scripted:s")
        return asyncio.run(evaluate_users([Simulator("scripted:s", user)], [], intents, tmp_path, judge=CachedJudge(Judge(), cache),
                                          questions=questions, scenario_assistant=Scenario(), settings=settings, progress=False,
                                          log=lambda m: None))

    report = run()
    sim = report["simulators"][0]
    parts = sim["parts"]
    convs = read_conversations(tmp_path / parts["conversations"]["transcripts"])
    assert parts["conversations"]["tokens"] == token_totals(convs) and parts["conversations"]["tokens"]["user"]["completion"] > 0
    asked = [json.loads(line)["prompt"] for line in cache.read_text().splitlines()]
    judged = {"prompt": sum(map(len, asked)), "completion": len(asked)}
    assert len(asked) == 6  # three open questions, three intents
    for name, items in (("role", 3), ("intent", 3)):
        tokens = parts[name]["tokens"]
        assert tokens["assistant"] == {"prompt": 7 * items, "completion": 5 * items}  # one scenario reply per item
        assert tokens["user"] == {"prompt": 0, "completion": (7 + 6) * items}  # the scripted user counts words: two turns each
    assert {k: parts["role"]["tokens"]["judge"][k] + parts["intent"]["tokens"]["judge"][k] for k in judged} == judged
    by_side = {side: {k: sum(parts[p]["tokens"].get(side, {}).get(k, 0) for p in ("conversations", "role", "intent"))
                      for k in ("prompt", "completion")} for side in ("assistant", "judge", "user")}
    assert sim["tokens"] == by_side
    table = markdown(report)
    assert (f"`scripted:s`: assistant {by_side['assistant']['prompt']:,} + {by_side['assistant']['completion']:,}, "
            f"judge {judged['prompt']:,} + {judged['completion']:,}, user ") in table
    again = run()
    assert len(cache.read_text().splitlines()) == 6 and again["simulators"][0]["tokens"] == by_side
