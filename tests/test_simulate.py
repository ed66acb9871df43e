"""The simulated voter: oracles, and one short end-to-end run of the real loop on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from playground.simulate import Oracle, Rater, split_prompts

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


def test_an_oracle_writes_the_better_answer_its_rule_prefers_and_rates_against_its_median():
    shorter = Oracle.parse("shorter")
    assert shorter.improve("First sentence. Second one! Third?") == "First sentence."
    assert shorter.improve("Only one sentence") == "Only one sentence"
    contains, without = Oracle.parse("contains:please"), Oracle.parse("no-word:sorry")
    assert contains.improve("Sit down.") == "Sit down. please"
    assert contains.score(contains.improve("Sit down.")) > contains.score("Sit down.")
    assert without.improve("Sorry, I am sorry you asked.") == ", I am you asked."
    assert without.score(without.improve("sorry sorry")) == 0 and without.improve("sorry") == ""
    rater = Rater(shorter)
    assert [rater.rate(t) for t in ("abc", "a", "abcde", "ab")] == [None, True, False, True]


def test_heldout_split_keeps_every_category():
    from playground.prompting import load_prompts

    train, heldout = split_prompts(load_prompts())
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    assert {p["category"] for p in heldout} == {p["category"] for p in train}


@pytest.mark.slow
def test_simulate_cli_runs_the_real_loop_and_reports_json(tiny_models, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "simulate",
            "--oracle",
            "shorter",
            "--votes",
            "4",
            "--corrections",
            "2",
            "--ratings",
            "--min-pairs",
            "2",
            "--epochs",
            "1",
            "--heldout-limit",
            "3",
            "--max-new-tokens",
            "12",
            "--train-threads",
            "1",
            "--learning-rate",
            "5e-2",
            "--base",
            str(tiny_models["base"]),
            "--sft",
            str(tiny_models["sft"]),
            "--data-dir",
            str(tmp_path),
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
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
    assert report["votes"]["corrections"] == 2 and report["votes"]["ratings"] >= 1
    learned = [r["learned_from"] for r in report["rounds"]]
    assert sum(x["demonstrations"] for x in learned) >= 2 and sum(x["ratings"] for x in learned) >= 1, learned
    assert {step["stage"] for r in report["rounds"] for step in r["steps"]} == {"sft", "dpo", "kto"}
    assert report["rounds"] and all(r["status"] == "done" for r in report["rounds"])
    assert report["after"]["adapter_version"] == report["rounds"][-1]["version"]
    assert all(step["loss"] is not None for r in report["rounds"] for step in r["steps"])
    assert set(report["after"]["mean_chars"]) == {"sft", "pref"}
    assert not (tmp_path / "datasets").exists(), "simulated votes never mix with real ones"
    assert Path(report["workspace"]).parent == tmp_path / "simulations"


@pytest.mark.slow
def test_an_ablation_trains_the_same_feedback_under_each_objective(tiny_models, tmp_path):
    from playground.data_sets import DataSet

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "simulate",
            "--oracle",
            "shorter",
            "--votes",
            "6",
            "--corrections",
            "2",
            "--ratings",
            "--ablation",
            "--epochs",
            "1",
            "--heldout-limit",
            "2",
            "--max-new-tokens",
            "10",
            "--train-threads",
            "1",
            "--learning-rate",
            "5e-2",
            "--base",
            str(tiny_models["base"]),
            "--sft",
            str(tiny_models["sft"]),
            "--data-dir",
            str(tmp_path),
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert list(report["ablation"]) == ["dpo", "sft", "sft+dpo", "sft+dpo+kto"]
    for name, figures in report["ablation"].items():
        assert {"win_rate", "ppl_sft", "kl", "mean_length", "seconds"} <= figures.keys(), name
        assert 0 <= figures["win_rate"] <= 1 and figures["kl"] >= 0 and figures["seconds"] > 0
    learned = {name: f["learned_from"] for name, f in report["ablation"].items()}
    total = report["feedback"]
    # The same recorded feedback, each objective taking only its own kinds.
    assert learned["dpo"] == {"demonstrations": 0, "pairs": total["pairs"]["total"], "ratings": 0}
    assert learned["sft"] == {"demonstrations": total["demonstrations"]["total"], "pairs": 0, "ratings": 0}
    assert learned["sft+dpo+kto"] == {kind: total[kind]["total"] for kind in ("demonstrations", "pairs", "ratings")}
    assert report["baseline"]["kl"] == 0 and report["baseline"]["win_rate"] == 0.5
    # The real data set of these models keeps it for its Stages view; the simulated feedback stays in the workspace.
    real = DataSet.for_models(tmp_path, str(tiny_models["base"]), str(tiny_models["sft"])).open_store()
    assert real.latest_ablation()["ablation"] == report["ablation"] and real.counts()["votes"] == 0
