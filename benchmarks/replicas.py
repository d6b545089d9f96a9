"""B6: conversations per second with 1 and 2 ``hf:`` replicas on a local Ray cluster.

    python benchmarks/replicas.py                 # 64 conversations x 4 turns, the B1 models
    python benchmarks/replicas.py --conversations 16

Each replica is a Ray actor with its own copy of the user model (the assistant runs in the
driver's process, the same in every row). This machine has two cores: two replicas share them
with each other and with the assistant, so the figures show the routing's overhead and the
driver's cost, not the scaling a cluster of GPU nodes gets (that is K times one replica's rate
while the driver keeps up; see the README's throughput model). Baseline: the same run with the
user model in the driver's process (no Ray). Driver CPU per user turn is the driver process's
own CPU time (replicas excluded, the in-process assistant included) over the user turns.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_models, intents, machine, save


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(user_model, assistant, prompts, turns: int) -> dict:
    import userlm
    from userlm.guardrails import GuardrailConfig

    user = userlm.SimulatedUser(user_model, GuardrailConfig())
    start, cpu = time.perf_counter(), _cpu()
    summary = userlm.simulate(prompts, user, assistant, settings=userlm.RunSettings(max_turns=turns, concurrency=len(prompts), seed=0),
                              progress=False)
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    turns_done = sum(len(c.user_turns()) for c in summary.conversations)
    return {"seconds": seconds, "conversations_per_s": len(prompts) / seconds, "driver_cpu_ms_per_user_turn": cpu * 1000 / turns_done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--models", default=str(Path(__file__).resolve().parent / "models"))
    args = parser.parse_args()

    from functools import partial

    import ray
    from local_models import ASSISTANT_TOKENS, USER_TOKENS

    from userlm.models.base import SamplingSettings
    from userlm.models.registry import ProviderOptions, chat_model, user_model
    from userlm.models.scale.replicas import ReplicaPlacement, ray_replicas

    user_dir, asst_dir = build_models(Path(args.models))
    prompts = intents(args.conversations)
    us, asst = SamplingSettings(1.0, 0.8, USER_TOKENS), SamplingSettings(0.7, 1.0, ASSISTANT_TOKENS)
    assistant = chat_model(f"hf:{asst_dir}", ProviderOptions(sampling=asst))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    rows = {}
    local = user_model(f"hf:{user_dir}", ProviderOptions(sampling=us))
    run(local, assistant, prompts, args.turns)  # warm-up
    rows["in_process"] = run(local, assistant, prompts, args.turns)
    for count in (1, 2):
        make = partial(user_model, f"hf:{user_dir}", ProviderOptions(sampling=us))  # one replica too: a Ray actor, not this process
        pool = ray_replicas(f"hf:{user_dir}", make, count, "auto", ReplicaPlacement(cpus=1))
        run(pool, assistant, prompts, args.turns)  # warm-up
        rows[f"{count}_replica{'s' if count > 1 else ''}"] = run(pool, assistant, prompts, args.turns)
        pool.shutdown()
    base = rows["in_process"]["conversations_per_s"]
    print(f"B6: {len(prompts)} conversations x {args.turns} turns, B1 models, 2 cores")
    for name, r in rows.items():
        r["x_in_process"] = r["conversations_per_s"] / base
        print(f"{name:<12} {r['seconds']:7.1f} s  {r['conversations_per_s']:.3f} conv/s  x in-process {r['x_in_process']:.2f}  "
              f"driver process CPU (assistant included) {r['driver_cpu_ms_per_user_turn']:.2f} ms per user turn")
    ray.shutdown()
    print(f"saved {save('replicas', {'machine': machine(), 'conversations': len(prompts), 'turns': args.turns, 'rows': rows})}")


if __name__ == "__main__":
    main()
