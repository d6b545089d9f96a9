"""What a newcomer meets first: a clone with no ``../shared`` beside it, an installed package
that carries its own data, and the demo as a short, complete tour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from servers import HANG_S

from userlm.data import BUILTIN, builtin_path

ROOT = Path(__file__).resolve().parents[1]


def test_the_built_package_carries_the_data_with_its_licenses_and_origins(tmp_path):
    """The wheel pip installs from this checkout holds every built-in file, each folder's license,
    and the README that names each file's origin."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=HANG_S, env=os.environ | {"PIP_NO_INDEX": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("userlm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    readme = zipfile.ZipFile(wheel).read("userlm/data/README.md").decode()
    for short, relative in BUILTIN.items():
        assert f"userlm/data/{relative}" in names, relative
        assert f"userlm/data/{relative.split('/')[0]}/LICENSE" in names, relative
        assert f"`{relative}`" in readme and f"`{short}`" in readme, relative
        assert zipfile.ZipFile(wheel).read(f"userlm/data/{relative}") == builtin_path(short).read_bytes()


def test_the_built_in_copies_are_the_published_files(shared_data):
    """Byte for byte what the shared data holds (whose README gives the same origins); skipped in a
    clone without the shared data."""
    shared = {"oasst": "oasst/en_100_tree.jsonl", "oasst-prompts": "oasst/prompt_lottery_en_250_text.jsonl", "gsm8k": "gsm8k/test.jsonl", "humaneval": "humaneval/HumanEval.jsonl.gz",
              "sharded": "lost_in_conversation/sharded_translation.json",
              "simulator-arena": "simulator-arena/document_creation_annotations_for_benchmarking.json"}
    assert set(shared) == set(BUILTIN)
    for short, relative in shared.items():
        assert builtin_path(short).read_bytes() == shared_data(relative, built_in=False).read_bytes(), short


def test_the_demo_runs_end_to_end_where_there_is_no_shared_data(tmp_path):
    """From a folder with no ../shared (and the shared-data variable pointing nowhere), a short demo
    prepares the Open-Assistant trees that ship with userlm, trains, simulates, evaluates, and
    writes a report that holds the evaluation; it says where each result is."""
    cwd = tmp_path / "clone"
    cwd.mkdir()
    env = os.environ | {"USERLM_SHARED_DATA": str(tmp_path / "nowhere"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "userlm", "demo", "--out", "demo", "--epochs", "0.05", "--conversations", "2",
                           "--max-turns", "2"], capture_output=True, text=True, cwd=cwd, env=env, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "shared").exists()
    demo = cwd / "demo"
    for step in ("[1/5] preparing the Open-Assistant trees that ship with userlm", "[4/5] evaluating", "[5/5] writing the report"):
        assert step in done.stderr, step
    assert done.stderr.index("[4/5]") < done.stderr.index("[5/5]")  # the report comes after the evaluation
    where = done.stderr.split("where each result is:", 1)[1]
    for path in ("demo/prepared", "demo/models/user", "demo/runs/demo.jsonl", "demo/eval/user_eval.md", "demo/report.html"):
        assert path in where and (cwd / path).exists(), path
    report = (demo / "report.html").read_text()
    data = json.loads(report.split('<script type="application/json" id="data">', 1)[1].split("</script>", 1)[0].replace("<\\/", "</"))
    assert [e["kind"] for e in data["evaluations"]] == ["user"] and len(data["conversations"]) == 2
    assert "missing keys" not in done.stderr
