#!/usr/bin/env bash
# Run every CPU benchmark in turn (nothing else should run meanwhile), then write RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY benchmarks/local_models.py
$PY benchmarks/http_runner.py
$PY benchmarks/report_scale.py
$PY benchmarks/write_results.py
