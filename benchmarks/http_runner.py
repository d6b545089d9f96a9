"""B3: the simulation runner against OpenAI-compatible servers.

    python benchmarks/http_runner.py          # 512 conversations x 4 turns, concurrency 128, 100 ms per request

A stand-in server (benchmarks/standin_server.py, its own process) answers every request after a
fixed delay, so the ideal wall time is requests x delay / concurrency. Reports the efficiency
(ideal / measured wall time) and this process's CPU time per request, for the median of
``--repeats`` runs. Results are saved per Python version: aiohttp starts a request's write
eagerly on 3.12 and later, and the runner makes it do so on 3.11 (:mod:`userlm.models.eager`).
"""

from __future__ import annotations

import argparse
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median_run, save


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=512)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import userlm
    from userlm.models.base import SamplingSettings
    from userlm.models.http.openai_compat import Endpoint, OpenAIChatModel, OpenAIUserModel

    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("standin_server.py")), "--port", str(port), "--delay", str(args.delay)])
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):
            try:
                httpx.post(f"{url}/chat/completions", json={}, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        endpoint = Endpoint(base_url=url, concurrency=args.concurrency, max_retries=0)
        sampling = SamplingSettings(1.0, 0.8, 32)
        user = userlm.SimulatedUser(OpenAIUserModel("standin-user", endpoint=endpoint, sampling=sampling, end_token_id=128256))
        assistant = OpenAIChatModel("standin-assistant", endpoint=endpoint, sampling=sampling)
        intents = [f"You are a user chatting with an assistant about topic {i}." for i in range(args.conversations)]
        # warm-up, untimed: imports, clients and TLS contexts are made once per process
        userlm.simulate(intents[:4], user, assistant, settings=userlm.RunSettings(max_turns=1), progress=False)
        runs = []
        for _ in range(args.repeats):
            cpu, wall = time.process_time(), time.perf_counter()
            run = userlm.simulate(intents, user, assistant, settings=userlm.RunSettings(max_turns=args.turns, concurrency=args.concurrency),
                                  progress=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            requests = sum(c.usage["user"].calls + c.usage["assistant"].calls for c in run.conversations)
            # only the figures are kept: runs kept whole would make each later run's garbage collections longer
            runs.append((wall, cpu, requests, len(run.conversations), dict(run.end_reasons)))
            del run
    finally:
        server.terminate()
        server.wait()
    wall, cpu, requests, conversations, end_reasons = median_run(runs, lambda r: r[0])
    ideal = requests * args.delay / args.concurrency
    result = {
        "python": platform.python_version(),
        "conversations": conversations,
        "requests": requests,
        "delay_s": args.delay,
        "concurrency": args.concurrency,
        "ideal_wall_s": ideal,
        "wall_s": wall,
        "efficiency": ideal / wall,
        "runner_cpu_ms_per_request": 1000 * cpu / requests,
        "efficiency_of_runs": [ideal / w for w, *_ in runs],
        "end_reasons": end_reasons,
    }
    print(f"B3: {result['conversations']} conversations x {args.turns} turns, {requests} requests, concurrency {args.concurrency}, "
          f"{args.delay * 1000:.0f} ms per request")
    print(f"Python {result['python']}, median of {args.repeats} runs: ideal wall {ideal:.2f} s, measured {wall:.2f} s, "
          f"efficiency {result['efficiency']:.3f} (all runs: {', '.join(f'{e:.3f}' for e in result['efficiency_of_runs'])}), "
          f"runner CPU {result['runner_cpu_ms_per_request']:.3f} ms per request; end reasons {result['end_reasons']}")
    version = "".join(platform.python_version_tuple()[:2])
    print(f"saved {save(f'http_runner_py{version}', result)}")


if __name__ == "__main__":
    main()
