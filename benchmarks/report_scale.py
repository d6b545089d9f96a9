"""Report at scale: 10,000 conversations (or more) in one HTML file; its size, how long headless
Chromium takes to open it, and how long a search and a filter take. It also checks, at that
scale, what the report promises of its plots: no console errors; a plot with nothing to show
says so (no P(end) recorded and no conversation ended by its user: the scripted user gives
neither) instead of drawing empty axes, and the rejections plot draws the drafts refused; conversations that all have the same length read as one bar; no plot title
under Plotly's mode bar. A screenshot of the page's top is saved beside the figures.

    python benchmarks/report_scale.py [--conversations 10000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, intents, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    args = parser.parse_args()

    import userlm
    from userlm.conversation import iter_conversations
    from userlm.models.doubles.scripted import ScriptedAssistant, ScriptedUser
    from userlm.reports.data import build
    from userlm.reports.html import write

    work = Path(tempfile.mkdtemp())
    texts = intents(500)
    run_file = work / "run.jsonl"
    user = userlm.SimulatedUser(ScriptedUser([["I need this", "can you help me with a thing"], "and what about the second part of it",
                                              "ok one more detail to check here", "thanks that settles it for me"]))
    assistant = ScriptedAssistant(["Sure. " + " ".join(texts[k % 500].split()[:60]) for k in range(7)])
    items = [userlm.Intent(id=f"c{k}", text=texts[k % 500]) for k in range(args.conversations)]
    started = time.perf_counter()
    userlm.simulate(items, user, assistant, out=run_file, settings=userlm.RunSettings(max_turns=4, concurrency=256), progress=False)
    simulated = time.perf_counter() - started
    refused = sum(len(m.rejected or []) for c in iter_conversations(run_file) for m in c.user_turns())
    started = time.perf_counter()
    out = write(build([run_file], []), work / "report.html")
    built = time.perf_counter() - started
    size_mb = out.stat().st_size / 2**20

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        started = time.perf_counter()
        tab.goto(out.as_uri())
        tab.wait_for_selector("body[data-ready='1']", timeout=300_000)
        load = time.perf_counter() - started
        checks = _check_plots(tab, errors, refused)
        shot = RESULTS / f"report_scale_{args.conversations}.png"
        tab.screenshot(path=str(shot))
        started = time.perf_counter()
        tab.fill("#search", f"c{args.conversations - 1}#0")  # the first search also builds the text index
        tab.wait_for_function("document.getElementById('count').textContent.startsWith('1 of')")
        search = time.perf_counter() - started
        tab.fill("#search", "")
        started = time.perf_counter()
        tab.select_option("#filter-intent", "c17")
        tab.wait_for_function("document.getElementById('count').textContent.startsWith('1 of')")
        filtering = time.perf_counter() - started
        browser.close()
    result = {"conversations": args.conversations, "html_mb": size_mb, "build_s": built, "load_s": load,
              "first_search_s": search, "filter_s": filtering, "simulate_s": simulated, "refused_drafts": refused, "checks": checks,
              "screenshot": shot.name}
    print(json.dumps(result, indent=2))
    name = "report_scale" if args.conversations == 10_000 else f"report_scale_{args.conversations}"
    print(f"saved {save(name, result)}")
    failed = [k for k, v in checks.items() if v is not True]
    if failed:
        sys.exit(f"the report at {args.conversations:,} conversations failed: {', '.join(failed)}")


def _check_plots(tab, errors: list[str], refused: int) -> dict[str, object]:
    """What the page shows of its plots, each check True when it holds (else what was seen)."""
    checks: dict[str, object] = {"no console errors": errors == [] or errors[:3]}
    rejections = tab.locator("#plot-rejections")
    drawn = rejections.locator(".main-svg").count() > 0
    if refused:
        checks["rejections plot draws the refused drafts"] = drawn or rejections.inner_text()[:200]
    else:
        checks["rejections plot says no draft was refused, no axes"] = (
            not drawn and "No draft was refused" in rejections.inner_text()) or rejections.inner_text()[:200]
    end = tab.locator("#plot-end")
    checks["ending plot says no P(end) was recorded and no user ended, no axes"] = (
        end.locator(".main-svg").count() == 0 and "no user ended a conversation" in end.inner_text()) or end.inner_text()[:200]
    low, high = tab.evaluate("document.getElementById('plot-turns').layout.xaxis.range")
    checks["turns of one length read as one bar"] = (low, high) == (3, 5) or [low, high]
    for plot in ("plot-turns", "plot-words"):
        tab.hover(f"#{plot} .main-svg")
        title = tab.locator(f"#{plot} .gtitle").bounding_box()
        bar = tab.locator(f"#{plot} .modebar").bounding_box()
        apart = bool(title and bar) and (title["x"] + title["width"] <= bar["x"] or title["y"] + title["height"] <= bar["y"]
                                         or bar["y"] + bar["height"] <= title["y"])
        checks[f"{plot} title clear of the mode bar"] = apart or [title, bar]
    return checks


if __name__ == "__main__":
    main()
