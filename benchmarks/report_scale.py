"""Report at scale: 10,000 conversations in one HTML file; its size, how long headless
Chromium takes to open it, and how long a search and a filter take.

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

from common import intents, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=10_000)
    args = parser.parse_args()

    import userlm
    from userlm.models.scripted import ScriptedAssistant, ScriptedUser
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
    started = time.perf_counter()
    out = write(build([run_file], []), work / "report.html")
    built = time.perf_counter() - started
    size_mb = out.stat().st_size / 2**20

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page()
        started = time.perf_counter()
        tab.goto(out.as_uri())
        tab.wait_for_selector("body[data-ready='1']", timeout=120_000)
        load = time.perf_counter() - started
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
              "first_search_s": search, "filter_s": filtering, "simulate_s": simulated}
    print(json.dumps(result, indent=2))
    print(f"saved {save('report_scale', result)}")


if __name__ == "__main__":
    main()
