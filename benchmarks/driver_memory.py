"""B5: the driver's memory as a simulation grows, and its CPU per turn.

    python benchmarks/driver_memory.py                 # 1k, 10k, 100k and 1M conversations
    python benchmarks/driver_memory.py --sizes 1000,10000

``userlm simulate`` itself (the command, in a fresh process per size) with scripted models (a
user of four turns, an assistant that replies at once), so that only the driver is measured:
peak resident memory of the process (``ru_maxrss``), wall time and CPU time per user turn. The
baseline is the same command at the smallest size: memory should not grow with the run beyond
what is in flight: intents are read as the run goes and the ids already written live in SQLite's
private temporary database (a 2 MiB cache in memory, the rest on disk). Then a resume of the largest run (every conversation already there) shows what
reading an existing output costs. Each row records the load average before and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, save

TURNS = ["I need help planning a trip to Lisbon in May.", "What about cheap places to stay near the centre?",
         "Can you list three of them with prices?", "Thanks, that helps a lot."]


def run(folder: Path, n: int, out: Path) -> dict:
    intents = folder / f"intents-{n}.jsonl"
    if not intents.exists():
        with open(intents, "w") as f:
            f.writelines(json.dumps({"id": f"t{k}", "intent": f"You are a user planning trip number {k}."}) + "\n" for k in range(n))
    script, replies = folder / "user.json", folder / "assistant.json"
    script.write_text(json.dumps(TURNS))
    replies.write_text(json.dumps(["Here is a plan with a few options for you."]))
    command = [sys.executable, "-c", "import resource, sys, time; from userlm.cli.main import main; t = time.process_time(); "
               "code = main(sys.argv[1:]); r = resource.getrusage(resource.RUSAGE_SELF); "
               "print('MEASURE', r.ru_maxrss, r.ru_utime + r.ru_stime, file=sys.stderr); sys.exit(code)",
               "simulate", "--user", f"scripted:{script}", "--assistant", f"scripted:{replies}", "--intents", str(intents),
               "--out", str(out), "--max-turns", "4", "--no-guardrails", "--min-turns", "0", "--concurrency", "256", "--no-progress"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    line = next(x for x in done.stderr.splitlines() if x.startswith("MEASURE"))
    _, rss_kb, cpu = line.split()
    turns = n * len(TURNS)
    return {"conversations": n, "peak_rss_mb": int(rss_kb) / 1024, "wall_s": wall, "cpu_s": float(cpu),
            "cpu_ms_per_turn": float(cpu) * 1000 / turns, "output_mb": out.stat().st_size / 2**20,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--save-as", default="driver_memory", help="the results' name under benchmarks/results")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in sizes:
            row = run(folder, n, folder / f"run-{n}.jsonl")
            rows.append(row)
            print(f"{n:>8} conversations: peak {row['peak_rss_mb']:.0f} MB, {row['wall_s']:.1f} s, "
                  f"{row['cpu_ms_per_turn']:.3f} ms CPU per user turn, output {row['output_mb']:.0f} MB", flush=True)
        largest = sizes[-1]
        resume = run(folder, largest, folder / f"run-{largest}.jsonl")
        print(f"resume of {largest} (all there): peak {resume['peak_rss_mb']:.0f} MB, {resume['wall_s']:.1f} s", flush=True)
    base = rows[0]["peak_rss_mb"]
    for row in rows:
        row["x_smallest"] = row["peak_rss_mb"] / base
    path = save(args.save_as, {"machine": machine(), "rows": rows, "resume": resume | {"conversations": largest}})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
