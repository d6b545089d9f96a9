"""Every mistake a user can make at the edge: one sentence naming what is wrong and what to do,
a non-zero exit code, no traceback, and nothing written. One row per case."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pytest
from servers import HANG_S

ROW = ": error: "  # "userlm: error: ..." from userlm, "userlm simulate: error: argument ..." from argparse


@pytest.fixture
def files(tmp_path, shared_data):
    f = {}
    f["intents"] = tmp_path / "intents.jsonl"
    f["intents"].write_text(json.dumps({"id": "a", "intent": "You want a recipe for a cake today."}) + "\n")
    f["user"] = tmp_path / "user.json"
    f["user"].write_text(json.dumps(["got a cake recipe for me please?", "and something quicker than that?"]))
    f["syntax"] = tmp_path / "broken.py"
    f["syntax"].write_text("def reply(messages)\n    return 'x'\n")
    f["raises"] = tmp_path / "raises.py"
    f["raises"].write_text("raise RuntimeError('no GPU here')\ndef reply(messages):\n    return 'x'\n")
    f["shape"] = tmp_path / "shape.json"
    f["shape"].write_text(json.dumps({"turns": ["a"]}))
    f["dir"] = tmp_path / "a_folder"
    f["dir"].mkdir()
    f["run"] = tmp_path / "run.jsonl"
    f["corrupt_gz"] = tmp_path / "HumanEval.jsonl.gz"
    f["corrupt_gz"].write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate")
    f["missing_fields"] = tmp_path / "he.jsonl"
    f["missing_fields"].write_text(json.dumps({"task_id": "x", "prompt": "def f():\n"}) + "\n")
    f["binary"] = tmp_path / "blob.json"
    f["binary"].write_bytes(bytes(range(256)) * 10)
    f["gsm8k"] = shared_data("gsm8k/test.jsonl")
    f["oasst"] = shared_data("oasst/en_100_tree.jsonl")
    f["empty"] = tmp_path / "empty.jsonl"
    f["empty"].write_text("")
    f["not_a_model"] = tmp_path / "not_a_model"
    f["not_a_model"].mkdir()
    (f["not_a_model"] / "notes.txt").write_text("hello")
    return f


def sim(files, *extra, user=None, assistant=None):
    return ["simulate", "--intents", files["intents"], "--user", user or f"scripted:{files['user']}",
            "--assistant", assistant or "scripted:" + str(files["user"]), "--out", files["run"], "--no-progress", *extra]


CASES = {
    "python file with a syntax error": (lambda f: sim(f, assistant=f"python:{f['syntax']}:reply"),
                                        "broken.py:1: not valid Python (expected ':')"),
    "python file raising on import": (lambda f: sim(f, assistant=f"python:{f['raises']}:reply"),
                                      "raises.py raised RuntimeError on import: no GPU here"),
    "scripted file of the wrong shape": (lambda f: sim(f, user=f"scripted:{f['shape']}"), "shape.json: expected a JSON list"),
    "--out a directory": (lambda f: ["simulate", "--intents", f["intents"], "--user", f"scripted:{f['user']}", "--assistant",
                                     f"scripted:{f['user']}", "--out", f["dir"]], "a_folder is a folder; --out takes a file"),
    "show a directory": (lambda f: ["show", f["dir"]], "a_folder is a folder; give the path of a JSONL file of conversations"),
    "report --out a directory": (lambda f: ["report", f["gsm8k"], "--out", f["dir"]], "a_folder is a folder; --out takes the .html file to write"),
    "corrupt .gz": (lambda f: ["eval-assistant", "--tasks", f"humaneval:{f['corrupt_gz']}", "--assistant", "scripted:" + str(f["user"]),
                               "--modes", "full", "--out", f["dir"] / "e"], "HumanEval.jsonl.gz: not a readable gzip file"),
    "a task record missing fields": (lambda f: ["eval-assistant", "--tasks", f"humaneval:{f['missing_fields']}", "--assistant",
                                                "scripted:" + str(f["user"]), "--modes", "full", "--out", f["dir"] / "e"],
                                     "he.jsonl:1: a humaneval task needs entry_point, test"),
    "humaneval: pointed at GSM8K": (lambda f: ["eval-assistant", "--tasks", f"humaneval:{f['gsm8k']}", "--assistant",
                                               "scripted:" + str(f["user"]), "--modes", "full", "--out", f["dir"] / "e"],
                                    "test.jsonl:1: a humaneval task needs task_id, prompt, entry_point, test"),
    "a binary sharded file": (lambda f: ["eval-assistant", "--tasks", f"sharded:{f['binary']}", "--assistant",
                                         "scripted:" + str(f["user"]), "--modes", "full", "--out", f["dir"] / "e"],
                              "blob.json: not a readable JSON list of sharded tasks"),
    "an empty tasks file": (lambda f: ["eval-assistant", "--tasks", f"gsm8k:{f['empty']}", "--assistant",
                                       "scripted:" + str(f["user"]), "--modes", "full", "--out", f["dir"] / "e"],
                            "empty.jsonl holds no tasks"),
    "prepare on a binary file": (lambda f: ["prepare", f["binary"], "--out", f["dir"] / "p"], "blob.json: not UTF-8 text"),
    "--min-words -5": (lambda f: sim(f, "--min-words", "-5"), "argument --min-words: must be 0 or more, not -5"),
    "--min-turns -3": (lambda f: sim(f, "--min-turns", "-3"), "argument --min-turns: must be 0 or more, not -3"),
    "--user-temperature -1": (lambda f: sim(f, "--user-temperature", "-1"), "argument --user-temperature: must be 0 or more, not -1"),
    "--max-retries -1": (lambda f: sim(f, "--max-retries", "-1", assistant="openai:m", ), "argument --max-retries: must be 0 or more, not -1"),
    "--request-concurrency 0": (lambda f: sim(f, "--request-concurrency", "0", assistant="openai:m"), "argument --request-concurrency: must be 1 or more, not 0"),
    "eval-user's judge without a key": (lambda f: ["eval-user", "--user", f"scripted:{f['user']}", "--data", f["oasst"], "--limit", "3",
                                                   "--judge", "openai:gpt-4o", "--out", f["dir"] / "ev"],
                                        "OPENAI_API_KEY is not set; export it, or point --judge-base-url"),
    "eval-user on data that is no chat log": (lambda f: ["eval-user", "--user", f"scripted:{f['user']}", "--data", f["intents"],
                                                         "--out", f["dir"] / "ev"],
                                              "not a known chat-log row (no 'conversation', 'conversations', 'messages', SimulatorArena "
                                              "'user_queries'/'ai_responses' or Open-Assistant 'prompt' tree field); give chat logs in a "
                                              "format userlm reads"),
    "hf: a mistyped local path": (lambda f: sim(f, user=f"hf:{f['dir']}/no_such_model"), "no_such_model: no such model folder"),
    "hf: a folder that is not a model": (lambda f: sim(f, user=f"hf:{f['not_a_model']}"),
                                         "not_a_model is a folder but holds no model (no config.json)"),
    "hf: an unknown name offline": (lambda f: sim(f, user="hf:nonexistent-model-xyz"),
                                    "hf:nonexistent-model-xyz: no such model folder here, and not in the local hub cache"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_sentence_and_a_non_zero_exit(files, case, tmp_path):
    make, sentence = CASES[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "userlm", *map(str, make(files))], capture_output=True, text=True,
                          timeout=HANG_S, cwd=tmp_path, env=env)
    assert done.returncode != 0, case
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if ROW in line and line.startswith("userlm")]
    assert len(errors) == 1 and sentence in errors[0], done.stderr
    assert not files["run"].exists() and not files["run"].with_name(".run.jsonl.lock").exists()


def test_a_run_that_cannot_reach_its_server_leaves_nothing_behind(files, tmp_path):
    """It fails before its first record: no empty output, no lock file, no folder it made."""
    from servers import free_port

    out = tmp_path / "runs" / "new" / "out.jsonl"
    command = ["simulate", "--intents", files["intents"], "--user", f"scripted:{files['user']}", "--assistant", "openai:m",
               "--assistant-base-url", f"http://127.0.0.1:{free_port()}/v1", "--max-retries", "0", "--out", out, "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "userlm", *map(str, command)], capture_output=True, text=True, timeout=HANG_S,
                          cwd=tmp_path, env=os.environ | {"OPENAI_API_KEY": "none"})
    assert done.returncode != 0 and "cannot reach http://127.0.0.1:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_an_unknown_hub_id_without_network_fails_at_once(files, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "https://hub.invalid"  # resolves nowhere, on any machine
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "userlm", *map(str, sim(files, user="hf:someone/nonexistent-model"))],
                          capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path, env=env)
    assert done.returncode == 2 and time.perf_counter() - started < 30
    assert done.stderr.strip().splitlines() == ["userlm: error: hf:someone/nonexistent-model: no such model folder here, not in the "
                                                "local hub cache, and hub.invalid cannot be reached; check the name, download it "
                                                "first (hf download someone/nonexistent-model), or give a local folder."]


def test_a_python_assistant_in_the_current_folder_is_found(files, tmp_path):
    (tmp_path / "my_assistant.py").write_text("def reply(messages):\n    return 'sure, here it is'\n")
    done = subprocess.run([sys.executable, "-m", "userlm", *map(str, sim(files, assistant="python:my_assistant:reply"))],
                          capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_bom_does_not_end_up_in_the_first_intent(tmp_path):
    from userlm.intents import load_intents

    path = tmp_path / "intents.txt"
    path.write_bytes("\ufeffYou want a cake recipe.\nYou want a bread recipe.\n".encode())
    assert load_intents(path)[0].text == "You want a cake recipe."
    jsonl = tmp_path / "intents.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"id": "a", "intent": "x y z"}) + "\n").encode())
    assert load_intents(jsonl)[0].id == "a"


def test_a_failed_write_is_one_sentence_and_keeps_what_was_written(files, tmp_path):
    """The file-size limit makes the second record's write fail, as a full disk would."""
    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    intents = tmp_path / "many.txt"
    intents.write_text("".join(f"You want help with chore number {k} today.\n" for k in range(5)))
    done = subprocess.run([sys.executable, "-m", "userlm", "simulate", "--intents", str(intents), "--user", f"scripted:{files['user']}",
                           "--assistant", f"scripted:{files['user']}", "--out", str(files["run"]), "--no-progress", "--concurrency", "1"],
                          capture_output=True, text=True, timeout=HANG_S, preexec_fn=small_files)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"cannot write {files['run']}" in done.stderr
    for line in files["run"].read_text().splitlines():
        json.loads(line)  # whatever is there is whole


def test_a_huge_refused_draft_is_stored_capped_with_its_length():
    import asyncio

    from userlm.guardrails import GuardrailConfig
    from userlm.models.doubles.scripted import ScriptedUser
    from userlm.user import SimulatedUser

    huge = "word " * 1_000_000
    user = SimulatedUser(ScriptedUser([[huge, "a short and fine turn"]]), GuardrailConfig())
    turn = asyncio.run(user.next_turn("You want x.", [], seed=0))
    [rejection] = turn.rejected
    assert rejection.reason == "too_long" and len(rejection.draft) <= 2000 and rejection.length == len(huge)
