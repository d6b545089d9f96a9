#!/usr/bin/env bash
# Run every CPU benchmark in turn (nothing else should run meanwhile), then write RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY benchmarks/local_models.py
$PY benchmarks/http_runner.py
# B3 again on Python 3.12 where the machine has it (no torch needed: a light environment of its own)
PY312=${PY312:-python3.12}
if "$PY312" -c "" 2>/dev/null; then
    [ -x .venv-py312/bin/python ] || { "$PY312" -m venv .venv-py312 && .venv-py312/bin/pip install -q -e .; }
    .venv-py312/bin/python benchmarks/http_runner.py
fi
$PY benchmarks/report_scale.py
$PY benchmarks/rl_envs.py
$PY benchmarks/write_results.py
