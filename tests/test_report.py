"""The HTML report: self-contained, and used in a real headless browser (Debian's chromium
driven by Playwright): loads without console errors, plots render, filters and search narrow the
list, a conversation opens with its guardrail notes, two runs line up side by side."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from servers import HANG_S

import userlm
from userlm.evaluation.assistants.evaluate import EvalSettings, evaluate
from userlm.evaluation.assistants.tasks import Task
from userlm.guardrails import GuardrailConfig
from userlm.models.doubles.function import FunctionAssistant
from userlm.models.doubles.scripted import ScriptedAssistant
from userlm.reports.data import build
from userlm.reports.html import render, write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_run(path: Path, n: int, reply: str, phrase_at: int = 7) -> Path:
    intents = [userlm.Intent(id=f"i{k}", text=f"You are a user chatting with an assistant about subject {k}.") for k in range(n)]

    class Users:
        name = "scripted-users"

        async def draft(self, request):
            k = int(request.intent.split("subject ")[1].rstrip("."))
            turn = sum(1 for m in request.messages if m["role"] == "user")
            if k % 10 == 3:  # these always start with a banned word: every draft refused
                return userlm.UserDraft(text="I want help with this")
            if turn == 0 and request.attempt == 0 and k % 2 == 0:
                # refused once, then resampled
                return userlm.UserDraft(text="Here is my question for you", prompt_tokens=20 + 10 * turn, completion_tokens=6)
            text = f"tell me about subject {k} turn {turn}"
            if k == phrase_at:
                text += " with purple elephants"
            if k == 5:  # a user turn that reads as the assistant's: the role_inversion fault
                text += ", how can I help you today"
            return userlm.UserDraft(text=text, end_prob=0.1 * turn, prompt_tokens=20 + 10 * turn, completion_tokens=len(text.split()))

    user = userlm.SimulatedUser(Users(), GuardrailConfig(max_attempts=3))
    userlm.simulate(intents, user, ScriptedAssistant([reply]), out=path, settings=userlm.RunSettings(max_turns=2), progress=False)
    return path


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("report")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # in a thread of its own: Playwright's event loop may already run in this one
        return pool.submit(_report_inputs, root, shared_data).result()


def _report_inputs(root, shared_data):
    a = make_run(root / "a.jsonl", 64, "Answer from the first assistant.")
    b = make_run(root / "b.jsonl", 64, "Answer from the second assistant.", phrase_at=8)
    tasks = [Task(id="t1", suite="gsm8k", text="Tom has 3 apples. He buys 4 more. How many now?", shards=["How many now?", "Tom has 3 apples.", "He buys 4 more."], reference={"answer": "7"})]
    asyncio.run(evaluate(tasks, FunctionAssistant(lambda m: "It is 7."), root / "eval", settings=EvalSettings(modes=("full", "sharded")), progress=False))
    reference = root / "reference.jsonl"
    from userlm.conversation import write_conversations
    from userlm.prepare.ingest import conversations_from

    write_conversations(reference, list(conversations_from(str(shared_data("oasst/en_100_tree.jsonl"))))[:200])
    return a, b, root / "eval" / "assistant.json", reference, root


def test_report_is_self_contained(report_inputs):
    a, b, ev, ref, root = report_inputs
    html = render(build([a, b], [ev], ref))
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", html)
    assert "Plotly" in html and html.count("<script") == 3
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1).replace("<\\/", "</"))
    assert len(data["conversations"]) == 128 and data["runs"][0]["rejections"]["first_word"] > 0
    assert data["evaluations"][0]["kind"] == "assistant" and len(data["reference_words"]) > 100


def test_the_command_writes_the_report_and_refuses_bad_input(report_inputs, capsys):
    from userlm.cli.main import main

    a, b, ev, ref, root = report_inputs
    assert main(["report", str(a), str(ev), "--reference", str(ref), "--out", str(root / "r.html")]) == 0
    assert (root / "r.html").stat().st_size > 1_000_000
    assert main(["report", str(root / "missing.jsonl"), "--out", str(root / "x.html")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err and not (root / "x.html").exists()


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("USERLM_REQUIRE_BROWSER") == "1"  # CI sets it: there a missing browser is a failure
    if CHROMIUM is None:
        message = "no chromium here: install Debian's chromium package (apt-get install chromium) to run the browser tests"
        pytest.fail(message) if required else pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                                                     "--disable-component-update", "--no-first-run", "--disable-sync"])
        yield browser
        browser.close()


def open_report(browser, path: Path):
    errors: list[str] = []
    tab = browser.new_page()
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(path.as_uri())
    tab.wait_for_selector("body[data-ready='1']", timeout=HANG_S * 1000)
    return tab, errors


@pytest.fixture(scope="module")
def page(browser, report_inputs):
    a, b, ev, ref, root = report_inputs
    return open_report(browser, write(build([a, b], [ev], ref), root / "report.html"))


def test_page_loads_without_console_errors_and_plots_render(page):
    tab, errors = page
    assert errors == []
    for plot in ("plot-turns", "plot-words", "plot-end", "plot-rejections", "eval-plot-0"):
        assert tab.locator(f"#{plot} .main-svg").count() > 0, plot
    assert "real users (reference.jsonl)" in tab.locator("#plot-words").inner_text()
    assert tab.locator("#summary-table tr").count() == 3


def test_filters_and_search_narrow_the_list(page):
    tab, _ = page
    assert tab.locator("#count").inner_text() == "128 of 128 conversations"
    assert tab.locator("#page").inner_text() == "page 1 of 3"
    tab.select_option("#filter-end", "guardrail_exhausted")
    assert tab.locator("#count").inner_text() == "14 of 128 conversations"  # subjects 3, 13, ..., 63 in both runs
    tab.select_option("#filter-run", "1")
    assert tab.locator("#count").inner_text() == "7 of 128 conversations"
    tab.select_option("#filter-end", "")
    tab.select_option("#filter-run", "")
    tab.fill("#search", "purple elephants")
    assert tab.locator("#count").inner_text() == "2 of 128 conversations"
    ids = tab.locator("#list li b").all_inner_texts()
    assert sorted(ids) == ["i7#0", "i8#0"]
    tab.fill("#search", "")


def test_a_conversation_opens_with_its_guardrail_notes(page):
    tab, _ = page
    tab.fill("#search", "subject 4 turn 0")
    tab.locator("#list li").first.click()
    detail = tab.locator("#detail")
    assert "1 draft(s) refused" in detail.inner_text()
    assert "first_word" in detail.inner_text() and "Here is my question for you" in detail.inner_text()
    assert "P(end) = 0.100" in detail.inner_text()
    tab.fill("#search", "")


def test_fault_rates_per_run_and_their_examples_open_the_transcript(page):
    tab, _ = page
    table = tab.locator("#faults-table")
    assert "role_inversion" in table.inner_text() and "reasoning_leak" in table.inner_text()
    row = table.locator("tr", has_text="role_inversion").first
    assert "0.0%" not in row.inner_text().split("\t")[1] and "i5#0" in row.inner_text()
    row.locator("a.fault-example").first.click()
    detail = tab.locator("#detail")
    assert "i5#0" in detail.inner_text() and "faults: role_inversion" in detail.inner_text()


def test_two_runs_side_by_side(page):
    tab, _ = page
    tab.check("#pair")
    assert tab.locator("#count").inner_text().startswith("64 of")
    tab.locator("#list li").first.click()
    columns = tab.locator("#detail .pair > div")
    assert columns.count() == 2
    assert "Answer from the first assistant." in columns.nth(0).inner_text()
    assert "Answer from the second assistant." in columns.nth(1).inner_text()
    tab.uncheck("#pair")


def test_side_by_side_says_when_the_runs_share_no_conversations(browser, report_inputs):
    from userlm.conversation import read_conversations, write_conversations

    a, b, ev, ref, root = report_inputs
    other = root / "other.jsonl"
    write_conversations(other, [c.model_copy(update={"id": "other-" + c.id, "intent_id": "other-" + c.intent_id})
                                for c in read_conversations(b)])
    tab, errors = open_report(browser, write(build([a, other], []), root / "disjoint.html"))
    tab.check("#pair")
    assert "the runs share no conversation ids" in tab.locator("#count").inner_text()
    assert errors == []


def test_answer_attempts_show_with_their_scores(browser, report_inputs):
    a, b, ev, ref, root = report_inputs
    tab, errors = open_report(browser, write(build([root / "eval" / "transcripts" / "sharded.jsonl"], [ev]), root / "eval.html"))
    tab.select_option("#filter-mode", "sharded")
    tab.select_option("#filter-score", "solved")
    assert tab.locator("#count").inner_text() == "1 of 1 conversations"
    tab.locator("#list li").first.click()
    text = tab.locator("#detail").inner_text().replace("\n", " ")
    assert "answer attempt: 7" in text and "score 1.00" in text
    assert errors == []


def test_user_simulator_evaluation_shows_its_table_and_termination_curve(browser, report_inputs, shared_data):
    """An eval-user result reads like its markdown table (simulators, real users, published rows),
    with each simulator's F1 against the P(end) threshold plotted."""
    from userlm.evaluation.simulators.evaluate import evaluate_users
    from userlm.evaluation.simulators.parts import Simulator, UserEvalSettings
    from userlm.prepare.ingest import conversations_from

    a, b, ev, ref, root = report_inputs
    threads = list(conversations_from(str(shared_data("oasst/en_100_tree.jsonl"))))[:20]

    class Thanker:
        """Ends after replies that answer without asking back (a rule, so the curve has a shape)."""

        name = "thanker"

        async def draft(self, request):
            if not request.messages:
                return userlm.UserDraft(text="hello there, i need some help with something")
            asks = "?" in request.messages[-1]["content"]
            return userlm.UserDraft(text="thanks, that helps a lot", end_prob=0.2 if asks else 0.7)

    intents = [userlm.Intent(id=f"u{k}", text=f"You want help with subject {k}.") for k in range(4)]
    from concurrent.futures import ThreadPoolExecutor

    run = evaluate_users([Simulator("thanker", Thanker())], threads, intents, root / "ueval",
                         settings=UserEvalSettings(parts=("termination", "conversations"), resamples=50, max_turns=2),
                         progress=False, log=lambda m: None)
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's event loop
        pool.submit(asyncio.run, run).result()
    tab, errors = open_report(browser, write(build([a], [root / "ueval" / "user_eval.json"]), root / "ueval.html"))
    text = tab.locator("#evaluations").inner_text()
    for expected in ("user_eval.json (user simulators)", "thanker", "termination F1", "real users (held-out)", "UserLM-8b (published)"):
        assert expected in text, expected
    assert tab.locator("#eval-plot-0 .main-svg").count() > 0
    assert errors == []


def test_the_rejection_rate_counts_refused_drafts_only(tmp_path):
    """Two refusals, then a kept turn, then an accepted end: 2 refused of 4 drafts, not 3 of 4."""
    from userlm.conversation import Conversation, Message, Rejection
    from userlm.reports.data import run_summary

    conv = Conversation(id="c#0", intent_id="c", intent="x", end_reason="user_ended", messages=[
        Message(role="user", content="hello there friend", attempts=3,
                rejected=[Rejection(draft="I want", reason="first_word"), Rejection(draft="hi", reason="too_short")]),
        Message(role="assistant", content="Hi!"),
    ], final_turn=Message(role="user", content="", attempts=1))
    summary = run_summary(tmp_path / "r.jsonl", [conv])
    assert (summary["refused"], summary["drafts"]) == (2, 4)
    assert summary["rejections"] == {"first_word": 1, "too_short": 1}


def test_the_page_shows_rates_drops_and_published_figures_as_labelled(page, report_inputs):
    tab, _ = page
    a, b, ev, ref, root = report_inputs
    summary = build([a], [ev], ref)["runs"][0]
    row = tab.locator("#summary-table tr").nth(1).inner_text()
    assert f"{summary['refused']} refused of {summary['drafts']} drafts ({100 * summary['refused'] / summary['drafts']:.1f}%)" in row
    records = [json.loads(line) for line in a.read_text().splitlines()]
    user = [sum(r["usage"]["user"][k] for r in records) for k in ("prompt_tokens", "completion_tokens")]
    assert user[0] > 0 and summary["tokens"]["user"] == {"prompt": user[0], "completion": user[1]}
    assert f"user {user[0]:,} + {user[1]:,}" in row  # each side's tokens, as the records hold them
    evaluations = tab.locator("#evaluations-body").inner_text()
    assert "drop vs full (full − mode)" in evaluations and "positive means this mode did worse" in evaluations
    assert "Published: simulated users talking to GPT-4o" in evaluations and "57.4" in evaluations
    assert tab.locator("#evaluations-body sup.fn").count() > 0 and tab.locator("#evaluations-body ol.footnotes li").count() > 0


def test_plots_with_nothing_to_show_say_so_and_titles_clear_the_mode_bar(browser, tmp_path):
    """A run whose drafts all passed and whose user model gives no P(end): the rejections plot says
    no draft was refused (no empty axes), the ending plot says P(end) was not recorded and no user
    ended (no flat line at zero); every
    conversation has the same length, so the turns plot spans a few values around that one bar;
    each plot's title stays clear of Plotly's mode bar."""
    intents = [userlm.Intent(id=f"p{k}", text=f"You want help with plain task {k}.") for k in range(6)]

    class Plain:
        name = "plain-users"

        async def draft(self, request):
            return userlm.UserDraft(text=f"tell me more about plain task number {len(request.messages)}")

    run = tmp_path / "plain.jsonl"
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # Playwright's own event loop runs in this thread
        pool.submit(userlm.simulate, intents, userlm.SimulatedUser(Plain(), GuardrailConfig()), ScriptedAssistant(["Sure."]),
                    out=run, settings=userlm.RunSettings(max_turns=3), progress=False).result()
    tab, errors = open_report(browser, write(build([run], []), tmp_path / "plain.html"))
    assert errors == []
    assert tab.locator("#plot-rejections .main-svg").count() == 0
    assert "No draft was refused" in tab.locator("#plot-rejections").inner_text()
    assert "no P(end) recorded" in tab.locator("#plot-end").inner_text()
    assert "no user ended a conversation" in tab.locator("#plot-end").inner_text()  # no flat line at zero
    assert tab.locator("#plot-end .main-svg").count() == 0
    low, high = tab.evaluate("document.getElementById('plot-turns').layout.xaxis.range")
    assert (low, high) == (2, 4)  # every conversation has 3 user turns: one bar, not a box across the axis
    for width in (1280, 1400, 900):  # plots narrow and widen with the window; a long title must still clear the bar
        tab.set_viewport_size({"width": width, "height": 1000})
        tab.wait_for_timeout(400)  # Plotly relayouts a responsive plot after a resize
        for plot in ("plot-turns", "plot-words"):
            tab.hover(f"#{plot} .main-svg")
            title = tab.locator(f"#{plot} .gtitle").bounding_box()
            bar = tab.locator(f"#{plot} .modebar").bounding_box()
            assert title and bar, plot
            apart = title["x"] + title["width"] <= bar["x"] or title["y"] + title["height"] <= bar["y"] or bar["y"] + bar["height"] <= title["y"]
            assert apart, (width, plot, title, bar)


def _overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"] or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def test_legends_never_cover_the_axis_titles_or_tick_labels(page):
    """Every plot with a legend (two runs and the real users give several), at three widths: the
    legend's box meets neither the x axis's title nor its tick labels."""
    tab, _ = page
    for width in (1280, 1400, 900):
        tab.set_viewport_size({"width": width, "height": 1000})
        tab.wait_for_timeout(400)  # Plotly relayouts a responsive plot after a resize
        with_legend = tab.evaluate("[...document.querySelectorAll('.js-plotly-plot')].filter(e => e.querySelector('.legend')).map(e => e.id)")
        assert {"plot-words", "plot-end"} <= set(with_legend), with_legend
        for plot in with_legend:
            legend = tab.locator(f"#{plot} .legend").bounding_box()
            others = [tab.locator(f"#{plot} .xtitle").bounding_box()]
            others += [tab.locator(f"#{plot} .xtick").nth(k).bounding_box() for k in range(tab.locator(f"#{plot} .xtick").count())]
            assert legend and others[0], plot
            assert not [box for box in others if box and _overlap(legend, box)], (width, plot)
