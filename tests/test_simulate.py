"""The simulated voter: oracles, and one short end-to-end run of the real loop on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from playground.simulate import Oracle, split_prompts

ROOT = Path(__file__).resolve().parent.parent


def test_oracles_score_as_named():
    shorter = Oracle.parse("shorter")
    assert shorter.compare("short", "a longer answer") == "a"
    assert shorter.compare("same!", "same?") == "tie"
    assert shorter.rank({"x": "medium one", "y": "tiny", "z": "the longest answer here"}) == ["y", "x", "z"]
    no_sorry = Oracle.parse("no-word:Sorry")
    assert no_sorry.compare("I am sorry, no.", "Here you go.") == "b"
    assert no_sorry.compare("Sorrysome is not the word", "fine") == "tie", "whole words only"
    contains = Oracle.parse("contains:please")
    assert contains.compare("Please sit.", "Sit.") == "a"
    for bad in ("longer", "no-word:", "contains", ""):
        with pytest.raises(ValueError, match="Unknown oracle"):
            Oracle.parse(bad)


def test_heldout_split_keeps_every_category():
    from playground.prompting import load_prompts

    train, heldout = split_prompts(load_prompts())
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    assert {p["category"] for p in heldout} == {p["category"] for p in train}


def test_simulate_cli_runs_the_real_loop_and_reports_json(tiny_models, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "playground", "-q", "simulate", "--oracle", "shorter", "--votes", "4",
         "--min-pairs", "2", "--epochs", "1", "--heldout-limit", "3", "--max-new-tokens", "12", "--train-threads", "1",
         "--learning-rate", "5e-2",
         "--base", str(tiny_models["base"]), "--sft", str(tiny_models["sft"]), "--data-dir", str(tmp_path), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    before, after = report["before"]["answers"], report["after"]["answers"]
    assert report["after"]["prompts"] == 3 and len(before) == len(after) == 3
    # Same seeds before and after: the SFT answers repeat, the preference-tuned ones changed with the adapter.
    assert [a["sft"] for a in after] == [b["sft"] for b in before]
    assert [a["pref"] for a in after] != [b["pref"] for b in before], "training changed no answer"
    assert report["win_rate"] == report["after"]["win_rate"]
    assert report["votes"]["votes"] == 4 and report["votes"]["pairs"] >= 2
    assert report["rounds"] and all(r["status"] == "done" for r in report["rounds"])
    assert report["after"]["adapter_version"] == report["rounds"][-1]["version"]
    assert all(step["loss"] is not None for r in report["rounds"] for step in r["steps"])
    assert set(report["after"]["mean_chars"]) == {"sft", "pref"}
    assert not (tmp_path / "datasets").exists(), "simulated votes never mix with real ones"
    assert Path(report["workspace"]).parent == tmp_path / "simulations"
