"""Runs that never mix, hang or lose: one writer per output, a resume that refuses other settings,
prompt stops on Ctrl-C and SIGTERM (real processes), and ``chat`` saving however it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from servers import HANG_S, wait_for

from tests.test_cli import userlm_cli
from userlm.runs import OutputLock


@pytest.fixture
def scripted(tmp_path):
    user = tmp_path / "user.json"
    user.write_text(json.dumps(["got a vegan lasagna recipe?", "anything quicker than that?"]))
    assistant = tmp_path / "assistant.txt"
    assistant.write_text("Sure, here is one.\nTry this one.\n")
    return [f"scripted:{user}", f"scripted:{assistant}"]


def simulate(intents, models, out, *extra):
    return userlm_cli("simulate", "--intents", intents, "--user", models[0], "--assistant", models[1], "--out", out,
                      "--max-turns", 2, "--no-progress", *extra)


def test_a_second_run_on_the_same_output_stops_naming_the_holder(tmp_path, intents_file, scripted):
    out = tmp_path / "run.jsonl"
    with OutputLock(out):
        done = simulate(intents_file, scripted, out)
    assert done.returncode == 2 and not out.exists()
    assert f"{out} is being written by another run (pid {os.getpid()} on" in done.stderr
    assert simulate(intents_file, scripted, out).returncode == 0  # released


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path, intents_file, scripted):
    out = tmp_path / "run.jsonl"
    assert simulate(intents_file, scripted, out).returncode == 0
    text = out.read_text()
    out.write_text(text.rstrip("\n"))  # as an editor or a copy may leave it
    again = simulate(intents_file, scripted, out)
    assert "0 conversations written, 3 already there" in again.stderr
    assert out.read_text() == text


@pytest.mark.parametrize("change,named", [
    (["--seed", "7"], "run_seed = 0, but this run has 7 (--seed)"),
    (["--max-turns", "3"], "max_turns = 2, but this run has 3 (--max-turns)"),
    (["--min-words", "4"], "(the guardrail options)"),
])
def test_resume_refuses_other_settings_naming_them(tmp_path, intents_file, scripted, change, named):
    out = tmp_path / "run.jsonl"
    assert simulate(intents_file, scripted, out).returncode == 0
    before = out.read_bytes()
    done = simulate(intents_file, scripted, out, *change)
    assert done.returncode == 2 and named in done.stderr and "another --out" in done.stderr
    assert out.read_bytes() == before


@pytest.mark.slow  # three runs of a local model; the library test in test_simulation checks the same rule in a second
def test_resume_refuses_another_sampling_of_a_model_that_samples_and_only_of_one(tmp_path, intents_file, scripted, tiny_user_dir):
    """What a run records comes from its models: another temperature for a model that samples is
    refused; for a script, which samples nothing, the flag changes nothing and the run resumes."""
    out = tmp_path / "run.jsonl"
    models = [f"hf:{tiny_user_dir}", scripted[1]]
    assert simulate(intents_file, models, out, "--user-max-tokens", 8, "--min-words", 1).returncode == 0
    before = out.read_bytes()
    done = simulate(intents_file, models, out, "--user-max-tokens", 8, "--min-words", 1, "--user-temperature", 0.5)
    assert done.returncode == 2 and "(the sampling options)" in done.stderr and "another --out" in done.stderr
    assert out.read_bytes() == before
    again = simulate(intents_file, models, out, "--user-max-tokens", 8, "--min-words", 1, "--assistant-temperature", 0.1)
    assert again.returncode == 0 and "0 conversations written, 3 already there" in again.stderr


def test_an_intent_id_reused_with_other_text_is_refused(tmp_path, intents_file, scripted):
    out = tmp_path / "run.jsonl"
    assert simulate(intents_file, scripted, out).returncode == 0
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "lasagna", "intent": "You want a pizza."}) + "\n")
    done = simulate(other, scripted, out)
    assert done.returncode == 2 and "holds conversation lasagna#0 made with intent = You are a user" in done.stderr


def test_more_samples_need_extend_and_the_same_model_by_another_path_is_the_same(tmp_path, intents_file, scripted, monkeypatch):
    out = tmp_path / "run.jsonl"
    assert simulate(intents_file, scripted, out).returncode == 0
    refused = simulate(intents_file, scripted, out, "--samples", 2)
    assert refused.returncode == 2 and "pass --extend" in refused.stderr
    relative = [f"scripted:{os.path.relpath(m.split(':', 1)[1])}" for m in scripted]
    extended = simulate(intents_file, relative, out, "--samples", 2, "--extend")
    assert extended.returncode == 0, extended.stderr
    assert "3 conversations written, 3 already there" in extended.stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 6


def test_every_conversation_failing_exits_non_zero_with_the_first_message_and_the_hint(tmp_path, intents_file, scripted):
    bot = tmp_path / "bot.py"
    bot.write_text("def reply(messages):\n    raise RuntimeError('the model is not loaded')\n")
    done = simulate(intents_file, [scripted[0], f"python:{bot}:reply"], tmp_path / "run.jsonl")
    assert done.returncode == 1
    assert "3 of 3 conversations failed: assistant_error (RuntimeError) 3. First: " in done.stderr
    assert "the model is not loaded" in done.stderr and "--retry-errors" in done.stderr


def _start(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "userlm", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)


def _wait_for_records(out, n, process):
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= n, f"{n} records", process=process, every_s=0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_hung_python_assistant_stops_within_two_seconds_keeping_what_finished(tmp_path, sig):
    intents = tmp_path / "intents.txt"
    intents.write_text("".join(f"You want help with chore number {k}.\n" for k in range(6)))
    bot = tmp_path / "bot.py"
    bot.write_text("import time\ncalls = []\ndef reply(messages):\n    calls.append(1)\n"
                   "    if len(calls) > 2:\n        time.sleep(1000)\n    return 'sure thing'\n")
    user = tmp_path / "user.json"
    user.write_text(json.dumps(["can you help me with this chore?"]))
    out = tmp_path / "run.jsonl"
    process = _start(["simulate", "--intents", intents, "--user", f"scripted:{user}", "--assistant", f"python:{bot}:reply",
                      "--out", out, "--max-turns", 1, "--concurrency", 1, "--no-progress"], tmp_path)
    _wait_for_records(out, 2, process)
    time.sleep(0.3)  # the third call hangs
    started = time.time()
    process.send_signal(sig)
    _, err = process.communicate(timeout=HANG_S)
    assert time.time() - started < 3.0
    assert process.returncode == 130 and "interrupted" in err and "run the same command again" in err
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["end_reason"] == "max_turns" for line in lines)
    assert "Task was destroyed" not in err and "Traceback" not in err


def test_ctrl_c_during_a_local_batch_stops_promptly(tmp_path, tiny_user_dir, intents_file):
    out = tmp_path / "run.jsonl"
    bot = tmp_path / "bot.py"
    bot.write_text("def reply(messages):\n    return 'sure, tell me more about it'\n")
    process = _start(["simulate", "--intents", intents_file, "--user", f"hf:{tiny_user_dir}", "--assistant", f"python:{bot}:reply",
                      "--out", out, "--samples", 40, "--max-turns", 8, "--user-max-tokens", 64, "--no-progress"], tmp_path)
    _wait_for_records(out, 1, process)
    started = time.time()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=HANG_S)
    assert time.time() - started < 3.0, err
    assert process.returncode == 130 and "Task was destroyed" not in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and len({r["id"] for r in records}) == len(records)


def _chat(tmp_path, stdin: str):
    user = tmp_path / "user.json"
    user.write_text(json.dumps(["can you help me plan a trip?", "what about hotels?", "ok and food?"]))
    out = tmp_path / "chat.jsonl"
    done = userlm_cli("chat", "--intent", "You want to plan a trip.", "--user", f"scripted:{user}", "--out", out, stdin=stdin)
    return done, [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


@pytest.mark.parametrize("stdin", ["Sure, where to?\n/quit\n", "Sure, where to?\n"])
def test_chat_saves_on_quit_and_on_end_of_input_saying_how_it_ended(tmp_path, stdin):
    done, [record] = _chat(tmp_path, stdin)
    assert done.returncode == 0
    assert record["end_reason"] == "assistant_quit" and len([m for m in record["messages"] if m["role"] == "user"]) == 2


def test_chat_saves_on_ctrl_c(tmp_path):
    user = tmp_path / "user.json"
    user.write_text(json.dumps(["can you help me plan a trip?", "what about hotels?"]))
    out = tmp_path / "chat.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "userlm", "chat", "--intent", "You want to plan a trip.", "--user",
                                f"scripted:{user}", "--out", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    line = "-"
    while "user>" not in line and line:  # until the prompt, or the end of its output
        line = process.stdout.readline()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=HANG_S)
    assert process.returncode == 0, err
    [record] = [json.loads(x) for x in out.read_text().splitlines()]
    assert record["end_reason"] == "assistant_quit" and record["messages"][0]["content"] == "can you help me plan a trip?"
