"""A driver that stays flat: intents read as the run goes, the ids already written kept in a ledger
that moves to disk as it grows, and a resume that is as exact either way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import userlm
from userlm.errors import UserError
from userlm.intents import IntentFile
from userlm.ledger import IdLedger
from userlm.models.doubles.scripted import ScriptedAssistant, ScriptedUser
from userlm.simulation import RunSettings


def _intents(path: Path, n: int, text: str = "You want help with chore {k}.") -> Path:
    path.write_text("".join(json.dumps({"id": f"c{k}", "intent": text.format(k=k), "n": k}) + "\n" for k in range(n)))
    return path


def _run(intents, out: Path, **settings):
    user = userlm.SimulatedUser(ScriptedUser(["can you help me with this chore?", "and after that?"]))
    return userlm.simulate(intents, user, ScriptedAssistant(["Sure.", "Then this."]), out=out, keep=False, progress=False,
                           settings=RunSettings(max_turns=2, **settings))


def test_an_intent_file_is_sized_and_read_again_on_each_pass(tmp_path):
    intents = IntentFile(_intents(tmp_path / "i.jsonl", 5))
    assert len(intents) == 5
    first, again = list(intents), list(intents)
    assert [i.id for i in first] == [i.id for i in again] == [f"c{k}" for k in range(5)]
    assert first[3].metadata == {"n": 3} and first[3].text == "You want help with chore 3."
    plain = tmp_path / "plain.txt"
    plain.write_text("You want a cake.\n\nYou want bread.\n")
    assert [(i.id, i.text) for i in IntentFile(plain)] == [("1", "You want a cake."), ("3", "You want bread.")]


def test_an_intent_file_names_a_reused_id_with_both_lines_and_a_change_mid_run(tmp_path):
    path = _intents(tmp_path / "i.jsonl", 4)
    with open(path, "a") as f:
        f.write(json.dumps({"id": "c1", "intent": "Again."}) + "\n")
    with pytest.raises(UserError, match=r"i.jsonl:5: id 'c1' was already used on line 2; ids must be unique"):
        IntentFile(path)
    path = _intents(tmp_path / "j.jsonl", 4)
    intents = IntentFile(path)
    with open(path, "a") as f:
        f.write(json.dumps({"id": "c9", "intent": "Added while running."}) + "\n")
    with pytest.raises(UserError, match=r"j.jsonl changed while this run was reading it"):
        list(intents)


def test_the_ledger_goes_to_disk_past_its_cache_and_stays_exact(monkeypatch):
    monkeypatch.setattr("userlm.ledger.CACHE_KIB", 16)  # a few pages: the rest of the ids are on disk
    with IdLedger() as ledger:
        assert ledger.add("a", "x") and ledger.add("b", flag=True)
        for k in range(20_000):
            ledger.add(f"id {k}", flag=k % 10 == 0)
        assert not ledger.add("a", "other")  # already there: unchanged
        assert len(ledger) == 20_002 and ledger.text("a") == "x" and "id 19999" in ledger and "id 20000" not in ledger
        assert ledger.flagged() == 2_001 and ledger.is_flagged("b") and not ledger.is_flagged("a")
        assert ledger.drop_flagged() == 2_001 and len(ledger) == 18_001 and "b" not in ledger and "id 10" not in ledger


def test_a_ledger_with_no_room_is_one_sentence():
    """SQLite's temporary file cannot grow (a file-size limit here, as a full disk would refuse
    it): one sentence saying what to do."""
    import resource

    code = ("import userlm.ledger as l; l.CACHE_KIB = 8; from userlm.errors import UserError\n"
            "ledger = l.IdLedger()\ntry:\n    [ledger.add(f'id {k}', 'x' * 40) for k in range(20000)]\n"
            "except UserError as e:\n    print(e)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cannot keep the run's ids in a temporary file (") and "point TMPDIR at a folder with room" in done.stdout


def test_a_resume_with_its_ids_on_disk_skips_exactly_what_is_there(tmp_path, monkeypatch):
    monkeypatch.setattr("userlm.ledger.CACHE_KIB", 16)
    out = tmp_path / "run.jsonl"
    first = _run(IntentFile(_intents(tmp_path / "six.jsonl", 6)), out)
    assert (first.written, first.skipped) == (6, 0)
    everything = IntentFile(_intents(tmp_path / "ten.jsonl", 10))
    rest = _run(everything, out)
    assert (rest.total, rest.written, rest.skipped) == (10, 4, 6)
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"c{k}#0" for k in range(10))
    again = _run(everything, out)
    assert (again.written, again.skipped) == (0, 10)
    # an intent of the output changed in the file: one sentence naming it, the output untouched
    before = out.read_text()
    changed = _intents(tmp_path / "changed.jsonl", 10)
    changed.write_text(changed.read_text().replace("chore 7.", "chore 7 today."))
    with pytest.raises(UserError, match=r"holds conversation c7#0 made with intent = You want help with chore 7\., but this run has "
                                        r"You want help with chore 7 today\. \(the intents file\)"):
        _run(IntentFile(changed), out)
    assert out.read_text() == before
