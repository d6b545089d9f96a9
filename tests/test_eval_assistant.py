"""Assistant evaluation: the task suites on their real data, and an end-to-end run whose
scores are known in advance."""

from __future__ import annotations

import asyncio
import json

import pytest

from userlm.evaluation.assistants.evaluate import EvalSettings, evaluate, intent_coverage, lexical_difference
from userlm.evaluation.assistants.tasks import Task, extract_answer, load_gsm8k, load_humaneval, load_sharded, score
from userlm.evaluation.metrics import aptitude_unreliability, mean_ci, percentile
from userlm.guardrails import GuardrailConfig
from userlm.models.base import ChatReply
from userlm.models.doubles.function import FunctionAssistant
from userlm.models.doubles.scripted import ScriptedUser


def test_gsm8k_gold_answers_are_extracted_and_scored_correct_for_all_items(shared_data):
    tasks = load_gsm8k(shared_data("gsm8k/test.jsonl"))
    assert len(tasks) == 1319
    assert all(score(t, extract_answer(t, t.reference["solution"])) == 1.0 for t in tasks)
    assert extract_answer(tasks[0], "So she makes $1,234.50 a day.") == "1234.50"
    assert score(tasks[0], "17") == 0.0


@pytest.fixture(scope="module")
def humaneval(shared_data):
    return load_humaneval(shared_data("humaneval/HumanEval.jsonl.gz"))


@pytest.mark.slow  # 164 sandboxed runs; the forgeries and escapes in test_sandbox stay in the default run
def test_every_canonical_humaneval_solution_passes_in_the_sandbox(humaneval):
    assert len(humaneval) == 164

    async def all_runs():
        gate = asyncio.Semaphore(4)

        async def one(task):
            reply = f"Here you go:\n```python\n{task.text}{task.reference['canonical_solution']}```"
            async with gate:
                return await asyncio.to_thread(score, task, extract_answer(task, reply))

        return await asyncio.gather(*(one(t) for t in humaneval))

    scores = asyncio.run(all_runs())
    failed = [t.id for t, s in zip(humaneval, scores) if s != 1.0]
    assert failed == []


def test_broken_humaneval_solutions_fail(humaneval):
    for task in humaneval[:12]:
        body = task.reference["canonical_solution"]
        broken = [
            task.text + "    return None\n",  # wrong answers
            task.text + body.replace("return", "return not", 1) if "return" in body else task.text + "    return 0\n",
            task.text + "    raise NotImplementedError\n",
        ]
        for code in broken:
            assert score(task, code) == 0.0, (task.id, code[-200:])
    assert extract_answer(humaneval[0], "I think you should loop over the pairs.") is None


def test_lost_in_conversation_sharded_records(shared_data):
    tasks = load_sharded(shared_data("lost_in_conversation/sharded_translation.json"))
    assert len(tasks) == 30 and all(len(t.shards) >= 2 for t in tasks)
    assert tasks[0].shards[0].startswith("Translate this German text into English:\nMünchen 1856")
    assert not tasks[0].binary
    assert score(tasks[0], tasks[0].reference["document_en"]) == pytest.approx(1.0)
    assert score(tasks[0], "Something else entirely.") < 0.1


def test_bootstrap_and_percentiles_on_hand_computed_cases():
    ci = mean_ci([0.0, 1.0, 1.0, 1.0], resamples=4000)
    assert ci["mean"] == 0.75 and 0.0 <= ci["low"] <= 0.75 <= ci["high"] <= 1.0
    assert percentile([0, 10, 20, 30, 40], 90) == pytest.approx(36.0)
    au = aptitude_unreliability({"a": [0.0] * 5 + [1.0] * 5, "b": [1.0] * 10})
    # task a: P90 = 1, P10 = 0; task b: P90 = P10 = 1
    assert au == {"aptitude": 100.0, "unreliability": 50.0}


def gsm_task(n: int, question: str, answer: str) -> Task:
    from userlm.evaluation.assistants.tasks import _question_first

    return Task(id=f"t{n}", suite="gsm8k", text=question, shards=_question_first(question), reference={"answer": answer})


TASKS = [
    gsm_task(1, "Tom has 3 apples. He buys 4 more. How many apples does he have?", "7"),
    gsm_task(2, "A box holds 6 eggs. Sara has 5 boxes. How many eggs does she have?", "30"),
]


def knowing_assistant(messages):
    """Answers right only once it has seen every sentence of the task; wrong before."""
    seen = " ".join(m["content"] for m in messages if m["role"] == "user")
    if "apples" in seen:
        return "The answer is 7." if "buys 4" in seen and "has 3" in seen else "Maybe 3?"
    if "eggs" in seen:
        return "That makes 30 eggs." if "Sara has 5" in seen and "holds 6" in seen else "I need more details."
    return "Hello"


def test_end_to_end_scores_are_exactly_as_expected(tmp_path):
    user = ScriptedUser([["How many apples does Tom end up with?"], ["He has 3 and buys 4 more."]])
    report = asyncio.run(evaluate(TASKS, FunctionAssistant(knowing_assistant), tmp_path, user_model=user,
                                  settings=EvalSettings(samples=2, max_turns=5), progress=False))
    rows = {(r["suite"], r["mode"]): r for r in report["results"]}
    assert rows[("gsm8k", "full")]["score"]["mean"] == 1.0
    assert rows[("gsm8k", "concat")]["score"]["mean"] == 1.0
    # sharded: question first, then the details; solved once all are shown
    sharded = [c for c in report["conversations"] if c["mode"] == "sharded"]
    assert all(c["score"] == 1.0 and c["end_reason"] == "task_solved" and c["turns"] == 3 for c in sharded)
    # simulated: the scripted user mentions the apples in full but never the eggs task
    simulated = {c["task_id"]: c for c in report["conversations"] if c["mode"] == "simulated"}
    assert simulated["t1"]["score"] == 1.0 and simulated["t2"]["score"] == 0.0
    assert rows[("gsm8k", "simulated")]["score"]["mean"] == 0.5
    # the drop is full minus the mode: the simulated mode did worse, so it is positive
    assert rows[("gsm8k", "simulated")]["drop_vs_full"]["mean"] == 0.5
    assert rows[("gsm8k", "simulated")]["unreliability"] == 0.0
    assert 0 < rows[("gsm8k", "simulated")]["intent_coverage"]["mean"] < 1
    # the record holds every attempt with its score
    transcript = {r["id"]: r for r in map(json.loads, (tmp_path / "transcripts" / "sharded.jsonl").read_text().splitlines())}
    apples = [e for m in transcript["t1#0"]["messages"] for e in m.get("events", [])]
    assert [(e["answer"], e["score"]) for e in apples] == [("3", 0.0), ("3", 0.0), ("7", 1.0)]
    eggs = [e for m in transcript["t2#0"]["messages"] for e in m.get("events", [])]
    assert [(e["answer"], e["score"]) for e in eggs] == [("30", 1.0)]  # no number, no attempt, until solved
    md = (tmp_path / "assistant.md").read_text()
    assert "| gsm8k | simulated | 4 | 50.0" in md
    assert "drop vs full (full − mode)" in md and "positive means this mode did worse" in md
    simulated_row = next(line for line in md.splitlines() if line.startswith("| gsm8k | simulated"))
    assert simulated_row.split(" | ")[6].startswith("50.0")  # drop vs full
    # the eggs task failed because the user never conveyed it: the simulator's failure, not the assistant's
    assert simulated["t2"]["failure_cause"] == "simulator" and simulated["t2"]["missing_shards"] == [1, 2]  # the boxes and the eggs per box
    assert simulated["t1"]["failure_cause"] is None and simulated["t1"]["faults"] == []
    assert rows[("gsm8k", "simulated")]["simulator_failure_rate"]["mean"] == 0.5
    assert rows[("gsm8k", "simulated")]["score_simulator_clean"]["mean"] == 1.0  # the apples conversations, clean and solved
    assert simulated_row.split(" | ")[4].startswith("100.0") and simulated_row.split(" | ")[5].startswith("50.0")
    # every empty cell points at a footnote that says why
    full_row = next(line for line in md.splitlines() if line.startswith("| gsm8k | full"))
    assert "-[^1]" in full_row and "[^1]: the full mode is the baseline" in md
    assert all("-[^" in cell or cell.strip() not in ("-",) for cell in full_row.split("|"))
    # the paper's Table 3 is shown, labelled as published
    assert "Published: simulated users talking to GPT-4o" in md and "| *UserLM-8b* | *57.4* |" in md
    assert report["published"]["rows"][2]["simulator"] == "UserLM-8b"


def test_failures_are_attributed_on_real_tasks(tmp_path, shared_data):
    """Real GSM8K tasks, an assistant that never gets them right, and three simulated users: one
    who conveys every sentence of the task, a sentence a turn (the assistant's failure), one who
    does it while talking like an assistant (both), and one who never gives the numbers (the
    simulator's)."""
    tasks = load_gsm8k(shared_data("gsm8k/test.jsonl"))[:3]

    class Users:
        name = "scripted-three"

        async def draft(self, request):
            from userlm.models.base import UserDraft

            task = next(t for t in tasks if t.id == request.conversation_key.rpartition("#")[0])
            said = sum(m["role"] == "user" for m in request.messages)
            if said == len(task.shards) or (task is tasks[2] and said):
                return UserDraft(text="", ended=True)
            text = {tasks[0].id: task.shards[said], tasks[1].id: "As an AI language model, I will say: " + task.shards[said],
                    tasks[2].id: "Can you help me with a math question about a store?"}[task.id]
            return UserDraft(text=text)

    report = asyncio.run(evaluate(tasks, FunctionAssistant(lambda messages: "The answer is 123456789."), tmp_path,
                                  user_model=Users(), settings=EvalSettings(modes=("simulated",), max_turns=8,
                                                                           guardrails=GuardrailConfig(min_turns=1, first_words=(),
                                                                                                      max_words=None, block_repetition=False)),
                                  progress=False))
    causes = {c["task_id"]: c["failure_cause"] for c in report["conversations"]}
    assert causes == {tasks[0].id: "assistant", tasks[1].id: "both", tasks[2].id: "simulator"}
    faults = {c["task_id"]: c["faults"] for c in report["conversations"]}
    assert faults[tasks[1].id] == ["role_inversion"] and faults[tasks[0].id] == []
    row = report["results"][0]
    assert row["failure_causes"] == {"assistant": 1, "simulator": 1, "both": 1}
    assert row["simulator_failure_rate"]["mean"] == pytest.approx(2 / 3) and row["score_simulator_clean"]["mean"] == 0.0
    # the transcripts carry the faults on the user's turns
    records = [json.loads(line) for line in (tmp_path / "transcripts" / "simulated.jsonl").read_text().splitlines()]
    both = next(r for r in records if r["metadata"]["task_id"] == tasks[1].id)
    assert both["messages"][0]["faults"] == ["role_inversion"]
    md = (tmp_path / "assistant.md").read_text()
    assert "score, simulator-clean" in md and "simulator-caused failures" in md and "| gsm8k | simulated | 3 | 0.0" in md


def test_descriptors_on_a_hand_computed_case():
    from userlm.conversation import Conversation, Message

    task = TASKS[0]
    conv = Conversation(id="x", intent_id="x", intent=task.intent,
                        messages=[Message(role="user", content="tom bought apples"), Message(role="assistant", content="ok")])
    # content words of the task (stopwords removed): tom, 3, apples, buys, 4, many; the user said tom and apples
    assert intent_coverage(task, conv) == pytest.approx(2 / 6)
    assert lexical_difference(task, conv) == pytest.approx(1 / 3)  # "bought" is not in the task


def test_the_command_runs_custom_tasks_with_a_users_scorer(tmp_path):
    import subprocess
    import sys

    (tmp_path / "tasks.jsonl").write_text(
        json.dumps({"id": "cap", "prompt": "What is the capital of France?", "answer": "Paris"}) + "\n"
        + json.dumps({"id": "col", "prompt": "What colour is the sky on a clear day?", "answer": "blue"}) + "\n")
    (tmp_path / "scoring.py").write_text("def score(task, answer):\n    return float(task.reference['answer'].lower() in answer.lower())\n")
    (tmp_path / "bot.py").write_text("def reply(messages):\n    return 'It is Paris.'\n")
    done = subprocess.run([sys.executable, "-m", "userlm", "eval-assistant", "--tasks", f"custom:{tmp_path / 'tasks.jsonl'}",
                           "--scorer", f"{tmp_path / 'scoring.py'}:score", "--assistant", f"python:{tmp_path / 'bot.py'}:reply",
                           "--modes", "full,concat", "--out", tmp_path / "eval", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "eval" / "assistant.json").read_text())
    assert [(r["mode"], r["score"]["mean"]) for r in report["results"]] == [("full", 0.5), ("concat", 0.5)]
    assert "| custom | full | 2 | 50.0" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "userlm", "eval-assistant", "--tasks", "mmlu:x.jsonl", "--assistant", "openai:m", "--modes", "full",
                          "--out", tmp_path / "e2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown task suite 'mmlu:x.jsonl'" in bad.stderr


def test_a_chat_model_can_extract_answers_and_rephrase_shards(tmp_path):
    seen = []

    def extractor(messages):
        reply = messages[0]["content"].split("Reply:\n", 1)[1]
        return ChatReply("7" if "seven" in reply else "NONE", prompt_tokens=len(messages[0]["content"]), completion_tokens=1)

    def rephraser(messages):
        seen.append(messages[0]["content"])
        return ChatReply("oh and " + messages[0]["content"].rsplit("Information: ", 1)[1].lower(), prompt_tokens=11, completion_tokens=4)

    def assistant(messages):
        said = " ".join(m["content"] for m in messages if m["role"] == "user")
        return "That is seven apples." if "buys 4" in said and "has 3" in said else "Tell me more."

    report = asyncio.run(evaluate(TASKS[:1], FunctionAssistant(assistant), tmp_path, extractor=FunctionAssistant(extractor),
                                  rephrase=FunctionAssistant(rephraser), settings=EvalSettings(modes=("sharded",)), progress=False))
    [conv] = report["conversations"]
    assert conv["score"] == 1.0 and conv["turns"] == 3
    transcript = json.loads((tmp_path / "transcripts" / "sharded.jsonl").read_text())
    users = [m["content"] for m in transcript["messages"] if m["role"] == "user"]
    assert users == ["How many apples does he have?", "oh and tom has 3 apples.", "oh and he buys 4 more."]
    assert len(seen) == 2 and "Chat so far:" in seen[0]
    # the extractor's tokens are the conversation's "extractor" side; the rephraser speaks for the user
    usage = transcript["usage"]
    assert usage["extractor"]["calls"] == 3 and usage["extractor"]["completion_tokens"] == 3 and usage["extractor"]["prompt_tokens"] > 100
    assert (usage["user"]["prompt_tokens"], usage["user"]["completion_tokens"]) == (2 * 11, 2 * 4)
    assert report["results"][0]["tokens"]["extractor"] == {"prompt": usage["extractor"]["prompt_tokens"], "completion": 3}


def test_the_built_in_suites_load_by_name_alone():
    from userlm.errors import UserError
    from userlm.evaluation.assistants.tasks import load_suite

    assert [len(load_suite(name)) for name in ("gsm8k", "humaneval", "sharded")] == [1319, 164, 30]
    assert load_suite("humaneval")[0].id == "HumanEval/0"
    with pytest.raises(UserError, match="use one of gsm8k, humaneval, sharded \\(built in\\) or gsm8k:PATH"):
        load_suite("mbpp")


def test_prepare_and_eval_user_take_the_built_in_chat_logs_by_name(tmp_path):
    from userlm.cli.main import main

    assert main(["prepare", "oasst", "--out", str(tmp_path / "prepared")]) == 0
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert report["splits"]["train"] > 300
    from userlm.cli.eval_user import _source
    from userlm.evaluation.simulators.evaluate import held_out_conversations

    assert len(held_out_conversations(_source("oasst"), "train", 50)) == 50  # eval-user --data oasst


def test_tasks_are_keyed_by_their_id_not_their_wording(tmp_path):
    """Two tasks may read the same and want different answers (one problem in two datasets, say):
    each conversation is scored against its own task; two tasks with one id are refused."""
    from userlm.errors import UserError

    text = "Tom has 3 apples and buys some more. How many does he have?"
    twins = [Task(id="a", suite="gsm8k", text=text, shards=[text], reference={"answer": "7"}),
             Task(id="b", suite="gsm8k", text=text, shards=[text], reference={"answer": "9"})]
    report = asyncio.run(evaluate(twins, FunctionAssistant(lambda m: "He has 7."), tmp_path, settings=EvalSettings(modes=("full", "sharded")),
                                  progress=False))
    scores = {(c["task_id"], c["mode"]): c["score"] for c in report["conversations"]}
    assert scores == {("a", "full"): 1.0, ("b", "full"): 0.0, ("a", "sharded"): 1.0, ("b", "sharded"): 0.0}
    with pytest.raises(UserError, match="two tasks have the id 'a'"):
        asyncio.run(evaluate([twins[0], twins[0]], FunctionAssistant(lambda m: "7"), tmp_path / "x", progress=False))


def test_each_modes_tokens_are_summed_by_side_and_shown():
    from userlm.conversation import Conversation, Message, Usage
    from userlm.evaluation.assistants.evaluate import markdown, summarise

    def conv(task: str, user: tuple[int, int], assistant: tuple[int, int]) -> Conversation:
        return Conversation(id=f"{task}#0", intent_id=task, intent="x", end_reason="max_turns",
                            metadata={"suite": "gsm8k", "task_id": task, "mode": "full"},
                            messages=[Message(role="user", content="how many?"), Message(role="assistant", content="no idea")],
                            usage={"user": Usage(calls=1, prompt_tokens=user[0], completion_tokens=user[1]),
                                   "assistant": Usage(calls=1, prompt_tokens=assistant[0], completion_tokens=assistant[1])})

    report = summarise(TASKS, {"full": [conv("t1", (120, 9), (1500, 700)), conv("t2", (80, 11), (1000, 300))]})
    [row] = report["results"]
    assert row["tokens"] == {"assistant": {"prompt": 2500, "completion": 1000}, "user": {"prompt": 200, "completion": 20}}
    report["settings"] = {}
    assert "gsm8k full: assistant 2,500 + 1,000, user 200 + 20." in markdown(report)
