"""Every framework recipe in the README, read from the README and run as written: only the model
names and addresses are swapped for the tiny models and the local servers (and TRL's GPU recipe
told it runs on the CPU); a recipe that stops saying what a swap replaces fails the test, so the
README and the tests cannot drift apart."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from servers import HANG_S, free_port, stop_session, transformers_serve

from userlm.guardrails import GuardrailConfig, check_draft
from userlm.integrations.environment import task_reward

README = Path(__file__).resolve().parents[1] / "README.md"
USER_8B = "hf:microsoft/UserLM-8b"
SERVED = "http://127.0.0.1:8000/v1"
POLICY = "Qwen/Qwen3-0.6B"


def recipe(name: str, swaps: dict[str, str]) -> str:
    """The code block after ``<!-- recipe: NAME -->`` in the README, with ``swaps`` made."""
    match = re.search(rf"<!-- recipe: {re.escape(name)} -->\n```[a-z]*\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match, f"the README has no recipe {name!r}"
    code = match.group(1)
    for old, new in swaps.items():
        assert old in code, f"the README's {name} recipe no longer says {old!r}"
        code = code.replace(old, new)
    return code


def run(code: str, cwd: Path | None = None) -> tuple[dict, str]:
    """Execute a Python recipe as a script would run it; its names and what it printed."""
    names: dict = {"__name__": "__main__"}
    out = io.StringIO()
    before = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README recipe", "exec"), names)
    finally:
        os.chdir(before)
    return names, out.getvalue()


def serve(user_spec: str, *flags: str):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "userlm", "serve", "--user", user_spec, "--port", str(port), *flags],
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = process.stderr.readline()
    assert "serving the simulated user" in line, line + process.stderr.read()
    return process, f"http://127.0.0.1:{port}/v1"


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=HANG_S) == 130


@pytest.fixture(scope="module")
def served(tiny_user_dir):
    process, url = serve(f"hf:{tiny_user_dir}", "--user-max-tokens", "24")
    yield url
    stop(process)


def test_the_openai_client_recipe(served):
    names, printed = run(recipe("openai", {SERVED: served}))
    answer, audit = names["answer"], names["audit"]
    assert answer.choices[0].finish_reason in ("stop", "length") and audit["attempts"] >= 1
    assert names["turn"] == answer.choices[0].message.content and printed.startswith(names["turn"])
    if not audit["ended"]:
        assert check_draft(names["turn"], ended=False, intent="You want a vegan lasagna recipe that takes under an hour.",
                           earlier_user_turns=[], config=GuardrailConfig()).accepted


def test_the_openevals_recipe_stops_when_the_user_ends(tmp_path):
    script = tmp_path / "script.txt"  # a user that ends after two turns, so the stop check is put to the test
    script.write_text("can you give me a vegan lasagna recipe?\nand how long does it take to bake?\n")
    process, url = serve(f"scripted:{script}")
    try:
        names, _ = run(recipe("openevals", {SERVED: url}))
    finally:
        stop(process)
    trajectory = names["result"]["trajectory"]
    users = [m["content"] for m in trajectory if m["role"] == "user"]
    assert users == ["can you give me a vegan lasagna recipe?", "and how long does it take to bake?", names["STOP"]]
    assert len(trajectory) == 6  # three user messages, each answered once by the app, then the stop check ended it


def deepeval_python() -> str:
    """DeepEval's own environment (``make setup-deepeval``: its pins clash with the main one's), or this one if it has DeepEval."""
    python = os.environ.get("USERLM_DEEPEVAL_PYTHON")
    if python:
        path = Path(python).absolute()  # (the recipe runs in a folder of its own)
        assert path.exists(), f"USERLM_DEEPEVAL_PYTHON={python} does not exist; run make setup-deepeval"
        return str(path)
    try:
        import deepeval  # noqa: F401
    except ImportError:
        pytest.skip("DeepEval is not installed here; make test runs this in its own environment (make setup-deepeval)")
    return sys.executable


def test_the_deepeval_recipe_reads_a_simulation(tmp_path, tiny_user_dir, tiny_assistant_dir, intents_file):
    done = subprocess.run([sys.executable, "-m", "userlm", "simulate", "--intents", str(intents_file), "--user", f"hf:{tiny_user_dir}",
                           "--assistant", f"hf:{tiny_assistant_dir}", "--max-turns", "2", "--out", "runs/my-assistant.jsonl"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # the recipe as written, then what it built, as JSON for this test to read
    check = recipe("deepeval", {}) + textwrap.dedent("""
        import json
        print(json.dumps([{"type": type(c).__name__, "scenario": c.scenario, "metadata": c.metadata,
                           "turns": [[t.role, t.content, t.metadata] for t in c.turns]} for c in cases]))
        """)
    ran = subprocess.run([deepeval_python(), "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "DEEPEVAL_TELEMETRY_OPT_OUT": "1"})
    assert ran.returncode == 0, ran.stderr[-3000:]
    cases = json.loads(ran.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in (tmp_path / "runs" / "my-assistant.jsonl").read_text().splitlines()]
    assert len(cases) == len(records) == 3 and {c["type"] for c in cases} == {"ConversationalTestCase"}
    for case, record in zip(cases, records):
        assert case["scenario"] == record["intent"] and case["metadata"]["end_reason"] == record["end_reason"]
        assert [(role, content) for role, content, _ in case["turns"]] == [(m["role"], m["content"]) for m in record["messages"]]
        assert all(meta["attempts"] >= 1 for role, _, meta in case["turns"] if role == "user")


@pytest.mark.slow
def test_the_inspect_recipes_with_a_local_user_and_a_user_on_its_own_server(tmp_path, tiny_user_dir, tiny_assistant_dir):
    proc, user_url = transformers_serve(tmp_path / "serve.log")
    try:
        (tmp_path / "lasagna.py").write_text(recipe("inspect-task", {USER_8B: f"hf:{tiny_user_dir}"}))
        lines = [line for line in recipe("inspect-run", {"openai/gpt-4o-mini": f"hf/{tiny_assistant_dir}",
                                                         "openai:microsoft/UserLM-8b": f"openai:{tiny_user_dir}",
                                                         "http://127.0.0.1:8001/v1": user_url}).splitlines()
                 if line.strip() and not line.startswith("#")]
        assert len(lines) == 2
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("OPENAI_BASE_URL", None)
        for k, line in enumerate(lines):
            logs = tmp_path / f"logs{k}"
            command = [*shlex.split(line), "--max-tokens", "12", "--log-dir", str(logs), "--log-format", "json", "--display", "none"]
            done = subprocess.run([sys.executable, "-m", "inspect_ai", *command[1:]], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=900)
            assert done.returncode == 0, done.stderr[-3000:]
            from inspect_ai.log import read_eval_log

            [path] = list(logs.glob("*.json"))
            log = read_eval_log(str(path))
            assert log.status == "success" and len(log.samples) == 1
            [sample] = log.samples
            outcome = sample.metadata["userlm"]
            assert outcome["user_model"] == (f"hf:{tiny_user_dir}" if k == 0 else f"openai:{tiny_user_dir}")
            assert [m.role for m in sample.messages] == ["user", "assistant"] * outcome["user_turns"]
            assert outcome["end_reason"] in ("max_turns", "user_ended", "guardrail_exhausted")
            notes = [e.data for e in sample.events if e.event == "info"]
            assert notes and all("attempts" in n and "refused" in n for n in notes)
            assert set(sample.scores) == {"includes", "user_ended"}
        assert "POST /v1/completions" in (tmp_path / "serve.log").read_text()  # the second run's user was the server's
    finally:
        stop_session(proc)


@pytest.mark.slow
def test_the_verifiers_recipe(tmp_path, tiny_user_dir, tiny_assistant_dir, monkeypatch):
    proc, url = transformers_serve(tmp_path / "serve.log")
    monkeypatch.setenv("POLICY_API_KEY", "none")
    try:
        names, printed = run(recipe("verifiers", {USER_8B: f"hf:{tiny_user_dir}", "http://127.0.0.1:8002/v1": url,
                                                  POLICY: str(tiny_assistant_dir)}))
    finally:
        stop_session(proc)
    outputs = names["results"]["outputs"]
    assert len(outputs) == 8 and not any(o["error"] for o in outputs)
    assert printed.strip() == str([o["reward"] for o in outputs])
    assert all(1 <= o["metrics"]["user_turns"] <= 4 for o in outputs)


def test_the_skyrl_recipe(tiny_user_dir):
    names, printed = run(recipe("skyrl", {USER_8B: f"hf:{tiny_user_dir}"}))
    step, env = names["step"], names["env"]
    assert step["done"] and printed.split() == [str(step["reward"]), step["metadata"]["end_reason"]]
    from userlm.evaluation.assistants.tasks import load_suite

    [task] = [t for t in load_suite("gsm8k") if t.id == "gsm8k-1"]
    assert step["reward"] == task_reward(task)(env.episode.replies()) == 1.0  # the stand-in policy's answer is right


@pytest.mark.slow
def test_the_trl_recipe(tmp_path, tiny_user_dir, tiny_assistant_dir, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    # the recipe is for GPUs: on the CPU, TrainingArguments wants it said
    names, _ = run(recipe("trl", {USER_8B: f"hf:{tiny_user_dir}", POLICY: str(tiny_assistant_dir),
                                  'report_to="none")': 'report_to="none", use_cpu=True, bf16=False)'}), cwd=tmp_path)
    trainer = names["trainer"]
    assert trainer.state.global_step == 2
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 2 and all(h["completions/mean_length"] > 0 for h in steps)
