"""The command line as a user meets it: real processes, exit codes, one-sentence errors, resume
after SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from servers import HANG_S, wait_for

from userlm.cli.main import main


def userlm_cli(*args, stdin=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "userlm", *map(str, args)],
        capture_output=True, text=True, input=stdin, env={**os.environ, **(env or {})}, timeout=HANG_S,
    )


@pytest.fixture
def scripts(tmp_path):
    user = tmp_path / "user.json"
    user.write_text(json.dumps([["I want a recipe", "got a vegan lasagna recipe?"], "anything quicker than that?"]))
    assistant = tmp_path / "assistant.txt"
    assistant.write_text("Sure, here is one.\nTry this one.\n")
    return user, assistant


def test_simulate_and_show_with_scripted_models(tmp_path, intents_file, scripts):
    out = tmp_path / "runs" / "demo.jsonl"
    user, assistant = scripts
    done = userlm_cli("simulate", "--intents", intents_file, "--user", f"scripted:{user}", "--assistant",
                      f"scripted:{assistant}", "--out", out, "--samples", 2, "--max-turns", 2,
                      env={"OPENAI_API_KEY": "sk-secret-never-logged"})
    assert done.returncode == 0, done.stderr
    assert "6 conversations written, 0 already there" in done.stderr
    text = out.read_text()
    assert len(text.splitlines()) == 6 and "sk-secret" not in text
    shown = userlm_cli("show", out, "--id", "lasagna#1")
    assert shown.returncode == 0
    assert "USER    got a vegan lasagna recipe?" in shown.stdout
    assert "1 refused: first_word" in shown.stdout
    assert "refused (first_word): I want a recipe" in shown.stdout  # the refused draft itself
    assert "ASSIST  Try this one." in shown.stdout
    again = userlm_cli("simulate", "--intents", intents_file, "--user", f"scripted:{user}", "--assistant",
                       f"scripted:{assistant}", "--out", out, "--samples", 2, "--max-turns", 2)
    assert "0 conversations written, 6 already there" in again.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--user", "llama:x"], "unknown user model 'llama:x'; use one of hf:<name>, vllm:<name>, openai:<name>, prompted:<name>, scripted:<name>."),
        (["--assistant", "gpt4"], "unknown assistant model 'gpt4'; use one of hf:<name>, vllm:<name>, openai:<name>, python:<name>, scripted:<name>."),
        (["--intents", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--min-words", "10", "--max-words", "5"], "invalid guardrail setting: min_words must not exceed max_words."),
        (["--user", "scripted:nowhere.json"], "nowhere.json: no such script file"),
    ],
)
def test_user_mistakes_are_one_sentence_and_exit_2(tmp_path, intents_file, scripts, capsys, args, message):
    user, assistant = scripts
    base = {"--intents": str(intents_file), "--user": f"scripted:{user}", "--assistant": f"scripted:{assistant}",
            "--out": str(tmp_path / "o.jsonl")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["simulate"] + [x for kv in base.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_malformed_intents_line_is_named(tmp_path, scripts, capsys):
    intents = tmp_path / "intents.jsonl"
    intents.write_text('{"id": "a", "intent": "x y z"}\n{"id": "b" "intent": "oops"}\n')
    user, assistant = scripts
    code = main(["simulate", "--intents", str(intents), "--user", f"scripted:{user}", "--assistant",
                 f"scripted:{assistant}", "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and f"{intents}:2: not valid JSON" in capsys.readouterr().err


def test_chat_lets_a_person_play_the_assistant(tmp_path, scripts):
    user, _ = scripts
    out = tmp_path / "chat.jsonl"
    done = userlm_cli("chat", "--user", f"scripted:{user}", "--intent", "You want lasagna.", "--min-turns", 2,
                      "--out", out, stdin="Here you go: pasta.\nUse lentils.\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.replace("assistant> ", "").splitlines() == [
        "user> got a vegan lasagna recipe?", "user> anything quicker than that?", "user> <|endconversation|>"
    ]
    record = json.loads(out.read_text())
    assert record["assistant_model"] == "human" and record["end_reason"] == "user_ended"
    assert [m["content"] for m in record["messages"]][1] == "Here you go: pasta."


def test_import_userlm_stays_light():
    code = "import sys, userlm, userlm.models.http.openai_compat, userlm.models.registry; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def local_simulate_command(tmp_path, user_dir, assistant_dir, intents: int, *, assistant_tokens: int, concurrency: int, seed: int):
    """A ``userlm simulate`` command line between the tiny local models (without --out)."""
    path = tmp_path / "intents.txt"
    path.write_text("".join(f"You are a user chatting with an assistant about question {i}.\n" for i in range(intents)))
    return ["simulate", "--intents", path, "--user", f"hf:{user_dir}", "--assistant", f"hf:{assistant_dir}",
            "--max-turns", 3, "--user-max-tokens", 12, "--assistant-max-tokens", assistant_tokens,
            "--concurrency", concurrency, "--min-words", 1, "--no-progress", "--seed", seed]


def test_sigkill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path, tiny_user_dir, tiny_assistant_dir):
    cmd = local_simulate_command(tmp_path, tiny_user_dir, tiny_assistant_dir, 24, assistant_tokens=24, concurrency=2, seed=5)
    out = tmp_path / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "userlm", *map(str, cmd), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, "three conversations written", process=proc, every_s=0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before_kill = out.read_text().splitlines()
    before = len(before_kill)
    assert 3 <= before < 24, "the run must be killed mid-way"

    resumed = userlm_cli(*cmd, "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{24 - before} conversations written, {before} already there" in resumed.stderr
    lines = out.read_text().splitlines()
    assert lines[:before] == before_kill  # what was saved stays as it was
    records = [json.loads(line) for line in lines]
    assert sorted(r["id"] for r in records) == sorted(f"{i}#0" for i in range(1, 25))
    assert all(r["end_reason"] and r["error"] is None for r in records)


def test_the_same_command_twice_writes_the_same_conversations(tmp_path, tiny_user_dir, tiny_assistant_dir):
    cmd = local_simulate_command(tmp_path, tiny_user_dir, tiny_assistant_dir, 10, assistant_tokens=16, concurrency=4, seed=9)
    runs = []
    for name in ("a.jsonl", "b.jsonl"):
        assert userlm_cli(*cmd, "--out", tmp_path / name).returncode == 0
        runs.append({r["id"]: {k: v for k, v in r.items() if k != "duration_s"}
                     for r in map(json.loads, (tmp_path / name).read_text().splitlines())})
    assert runs[0] == runs[1] and len(runs[0]) == 10


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from userlm.cli.main import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        text = parser.format_help()
        assert "``" not in text and "default: None" not in text, name
        # a help that gives only the default says nothing of what the option does
        silent = [a.option_strings or [a.dest] for a in parser._actions
                  if a.dest != "help" and not re.sub(r"\(default:[^)]*\)", "", a.help or "").strip()]
        assert silent == [], (name, silent)


REQUIRED = ["--intents", "i.txt", "--user", "scripted:u.json", "--assistant", "scripted:a.txt", "--out", "o.jsonl"]


def test_a_typod_flag_gets_the_command_usage_and_the_nearest_flag(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["simulate", "--sampels", "3", *REQUIRED])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: userlm simulate ")  # the command's usage, not the top level's
    assert err.strip().splitlines()[-1] == ("userlm simulate: error: unrecognized argument --sampels 3; did you mean --samples? "
                                           "(see userlm simulate --help)")
    with pytest.raises(SystemExit):
        main(["report", "--zzz", "runs.jsonl"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == "userlm report: error: unrecognized argument --zzz (see userlm report --help)"


def test_a_bad_value_is_one_line_that_points_at_the_commands_help(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["simulate", "--samples", "0", *REQUIRED])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "userlm simulate: error: argument --samples: must be 1 or more, not 0 (see userlm simulate --help)"]
    with pytest.raises(SystemExit):
        main(["simulate", "--samples", "2"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "userlm simulate: error: the following arguments are required: --intents, --out, --user, --assistant (see userlm simulate --help)"]


def test_chat_replays_what_simulate_wrote_for_the_same_seed_and_intent(tmp_path, tiny_user_dir):
    """One conversation loop and one place that derives seeds: typing simulate's assistant replies
    into ``userlm chat`` with the same --seed gives the user turns simulate wrote, on a real model."""
    intents = tmp_path / "intents.jsonl"
    intents.write_text(json.dumps({"id": "trip", "intent": "You want to plan a cheap weekend trip to Lisbon."}) + "\n")
    replies = ["Sure, when do you want to go?", "Flights are cheapest on Tuesdays.", "Anything else?"]
    (tmp_path / "replies.txt").write_text("\n".join(replies) + "\n")
    common = ["--user", f"hf:{tiny_user_dir}", "--seed", 3, "--max-turns", 3, "--user-max-tokens", 12, "--min-words", 1]
    simulated = userlm_cli("simulate", "--intents", intents, "--assistant", f"scripted:{tmp_path / 'replies.txt'}",
                           "--out", tmp_path / "sim.jsonl", "--no-progress", *common)
    assert simulated.returncode == 0, simulated.stderr
    chatted = userlm_cli("chat", "--intents", intents, "--id", "trip", "--out", tmp_path / "chat.jsonl", *common,
                         stdin="\n".join(replies) + "\n")
    assert chatted.returncode == 0, chatted.stderr
    [sim] = [json.loads(line) for line in (tmp_path / "sim.jsonl").read_text().splitlines()]
    [chat] = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text().splitlines()]
    users = [[m["content"] for m in r["messages"] if m["role"] == "user"] for r in (sim, chat)]
    assert users[0] and users[0] == users[1]
    assert (sim["id"], sim["seed"]) == (chat["id"], chat["seed"]) == ("trip#0", sim["seed"])


def test_ray_at_an_address_where_nothing_listens_is_one_sentence_at_once(tmp_path, intents_file, tiny_user_dir, tiny_assistant_dir):
    from servers import free_port

    port = free_port()  # nothing listens there
    out = tmp_path / "run.jsonl"
    started = time.monotonic()
    done = userlm_cli("simulate", "--intents", str(intents_file), "--user", f"hf:{tiny_user_dir}", "--assistant", f"hf:{tiny_assistant_dir}",
                      "--user-replicas", "2", "--ray", f"127.0.0.1:{port}", "--out", str(out))
    assert time.monotonic() - started < 30
    assert done.returncode == 2 and not out.exists()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"userlm: error: --ray 127.0.0.1:{port}: nothing answers there (connection refused); start the cluster's head "
                     f"there (ray start --head --port {port}) or give its address."]


def test_runs_report_their_tokens_and_a_token_budget_stops_them_cleanly(tmp_path, intents_file, tiny_user_dir, tiny_assistant_dir):
    out = tmp_path / "run.jsonl"
    command = ["simulate", "--intents", str(intents_file), "--user", f"hf:{tiny_user_dir}", "--assistant", f"hf:{tiny_assistant_dir}",
               "--max-turns", "2", "--concurrency", "1", "--out", str(out), "--no-progress"]

    def used(records):
        return sum(u["prompt_tokens"] + u["completion_tokens"] for r in records for u in r["usage"].values())

    first = userlm_cli(*command, "--token-budget", "100")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert first.returncode == 1 and len(records) == 1  # the first conversation spent the budget; none other started
    assert (f"--token-budget 100 is spent ({used(records):,} tokens in all): 2 conversations were not started; run the same "
            "command with a larger --token-budget to go on.") in first.stderr
    line = next(x for x in first.stderr.splitlines() if x.startswith("tokens this run:"))
    sides = {side: sum(records[0]["usage"][side][k] for k in ("prompt_tokens", "completion_tokens")) for side in ("user", "assistant")}
    numbers = [int(n.replace(",", "")) for n in re.findall(r"[\d,]+", line)]
    assert numbers[-1] == used(records) and sum(numbers[:-1]) == sides["user"] + sides["assistant"]
    again = userlm_cli(*command, "--token-budget", "10000000")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert again.returncode == 0, again.stderr
    assert sorted(r["id"] for r in records) == ["lasagna#0", "sort#0", "trip#0"]
    assert f"{used(records):,} in all in the output" in again.stderr


def test_replicas_of_a_vllm_engine_ask_for_a_gpu_where_the_cluster_has_them():
    from userlm.models.scale.replicas import replica_gpus

    assert replica_gpus("vllm:microsoft/UserLM-8b", {"CPU": 64.0, "GPU": 8.0}) == 1.0
    assert replica_gpus("vllm:microsoft/UserLM-8b", {"CPU": 64.0}) == 0.0  # a CPU cluster: vLLM's CPU build
    assert replica_gpus("hf:microsoft/UserLM-8b", {"CPU": 64.0, "GPU": 8.0}) == 0.0  # hf: asks only when told
