"""The simulated voter: oracles, and one short end-to-end run of the real loop on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import simulate_json

from playground.errors import UserError
from playground.simulate import Oracle, Rater, choose_heldout, split_prompts

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
    plain = Oracle.parse("plain")
    lay = "Quantum computers use qubits. A qubit can be 0 and 1 at once. So they try many answers together."
    expert = (
        "Quantum computation leverages superposition and entanglement to manipulate probability amplitudes across "
        "exponentially large Hilbert spaces, enabling asymptotically superior algorithms."
    )
    assert plain.compare(lay, expert) == "a" and plain.compare(expert, lay) == "b"
    assert plain.compare(lay, lay.replace("So", "Thus")) == "tie", "within the margin: reads the same"
    assert plain.compare("", lay) == "b", "no answer is not plain"
    for bad in ("longer", "no-word:", "contains", "plain:x", ""):
        with pytest.raises(ValueError, match="Unknown oracle"):
            Oracle.parse(bad)


def test_an_oracle_writes_the_better_answer_its_rule_prefers_and_rates_against_its_median():
    shorter = Oracle.parse("shorter")
    assert shorter.improve("First sentence. Second one! Third?") == "First sentence."
    assert shorter.improve("Only one sentence") == "Only one sentence"
    assert Oracle.parse("plain").improve("First. Second! Third? Fourth.") == "First. Second!"
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


def rows(*texts: str, category=None) -> list[dict]:
    return [{"prompt": text, "category": category} for text in texts]


def test_heldout_prompts_also_voted_on_are_dropped_with_a_warning(caplog):
    prompts = rows("What is a cat?", "Name three rivers.", "Write a haiku.")
    heldout = rows("  what is a CAT?", "Why is the sky blue?", "Name three\n rivers.", "Write a haiku about rain.")
    with caplog.at_level("WARNING", logger="playground.simulate"):
        train, kept, dropped = choose_heldout(prompts, heldout)
    assert train == prompts and dropped == 2
    assert [p["prompt"] for p in kept] == ["Why is the sky blue?", "Write a haiku about rain."]
    assert "2 of 4 held-out prompts are also prompts to vote on" in caplog.text
    with pytest.raises(UserError, match="Every one of the 2 held-out prompts"):
        choose_heldout(prompts, rows("Write a HAIKU.", "what is a cat?"))
    # Without a held-out file the split (every 4th) overlaps only where the prompt file repeats a prompt.
    repeated = prompts + rows("Name a colour.", "Sing.", "WHAT is a cat?")
    assert choose_heldout(repeated, None) == (repeated[1:4] + repeated[5:], rows("Sing."), 1)


def test_the_heldout_limit_takes_prompts_spread_over_the_file_in_its_order():
    grouped = [row for c in "abcd" for row in rows(*(f"{c}{i}" for i in range(3)), category=c)]
    _, kept, _ = choose_heldout(rows("voted"), grouped, limit=4)
    assert [p["prompt"] for p in kept] == ["a1", "b1", "c1", "d1"]
    _, kept, _ = choose_heldout(rows("voted"), grouped, limit=5)
    assert [p["prompt"] for p in kept] == ["a1", "b0", "c0", "c2", "d1"]
    assert choose_heldout(rows("voted"), grouped, limit=40)[1] == grouped
    # The default split of the default prompts, grouped by category: as many categories as prompts taken.
    from playground.prompting import load_prompts

    train, heldout, _ = choose_heldout(load_prompts(), None, limit=7)
    assert len(heldout) == 7 == len({p["category"] for p in heldout}) == len({p["category"] for p in train})
    with pytest.raises(UserError, match="at least 1"):
        choose_heldout(rows("voted"), grouped, limit=0)


def test_simulate_refuses_a_heldout_file_that_holds_only_prompts_to_vote_on(tmp_path, capsys):
    from playground.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is a cat?"}) + "\n" + json.dumps({"prompt": "Hi?"}) + "\n")
    argv = ["-q", "simulate", "--oracle", "shorter", "--votes", "1", "--prompts", str(prompts)]
    code = main([*argv, "--heldout", str(prompts), "--data-dir", str(tmp_path / "data"), "--sft", "no-such-model"])
    assert code == 2
    assert "Every one of the 2 held-out prompts is also a prompt to vote on" in capsys.readouterr().err
    assert not (tmp_path / "data").exists(), "refused before anything was made or loaded"


@pytest.mark.slow
def test_simulate_cli_runs_the_real_loop_and_reports_json(tiny_models, tmp_path):
    args = (
        "--oracle shorter --votes 4 --corrections 2 --ratings --min-pairs 2 --heldout-limit 3 --heldout-samples 2 "
        "--max-new-tokens 12"
    )
    report = simulate_json(tiny_models, tmp_path, *args.split())
    before, after = report["before"]["answers"], report["after"]["answers"]
    assert report["after"]["prompts"] == 3 and len(before) == len(after) == 6, "3 prompts x 2 samples"
    assert len({a["seed"] for a in after}) == 6 and [a["prompt"] for a in after[:3]] == [a["prompt"] for a in after[3:]]
    a = report["after"]
    assert a["comparisons"] == 6 and 0 <= a["ties"] <= 1 and a["win_rate_se"] is not None
    decided = [x for x in after if len(x["pref"].strip()) != len(x["sft"].strip())]
    assert a["decided"] == len(decided) and a["ties"] == pytest.approx(1 - len(decided) / 6)
    if decided:
        wins = sum(len(x["pref"].strip()) < len(x["sft"].strip()) for x in decided)
        assert a["win_rate_decided"] == wins / len(decided)
    assert set(a["mean_new_tokens"]) == {"sft", "pref"}
    # Fluency: distinct-2 of each arm's held-out answers, the perplexity ratio, the serving version's KL.
    from playground.drift import distinct_n

    assert a["distinct_2"] == {arm: distinct_n([x[arm] for x in after], 2) for arm in ("sft", "pref")}
    ppl = a["fluency_sft_perplexity"]
    assert ppl["sft"] and ppl["pref"] and a["ppl_ratio"] == pytest.approx(ppl["pref"] / ppl["sft"])
    kl = report["drift"].get(f"v{a['adapter_version']}", {}).get("kl_to_sft")
    assert report["fluency"] == {
        "ppl_ratio": a["ppl_ratio"],
        "distinct_2": a["distinct_2"]["pref"],
        "kl": kl,
        "mean_new_tokens": a["mean_new_tokens"],
        "hit_limit": a["hit_limit"],
    }
    assert report["vote_seconds"] == 0, "flat out by default"
    seconds = report["seconds"]
    assert 0 < seconds["voting"] <= seconds["loop"] and seconds["loop"] + seconds["evaluation"] <= seconds["total"]
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


def learned_by_objective(report: dict) -> dict[str, dict[str, int]]:
    """What each objective of the report should have learned from: all the recorded feedback of its stages' kinds."""
    from playground.training.examples import KIND_OF, OBJECTIVES

    total = report["feedback"]
    kinds = {name: {KIND_OF[stage] for stage in stages} for name, stages in OBJECTIVES.items()}
    return {name: {k: total[k]["total"] if k in kinds[name] else 0 for k in total} for name in report["ablation"]}


@pytest.mark.slow
def test_an_ablation_trains_the_same_feedback_under_each_objective(tiny_models, tmp_path):
    from playground.data_sets import DataSet

    args = "--oracle shorter --votes 6 --corrections 2 --ratings --ablation --heldout-limit 2 --max-new-tokens 10"
    report = simulate_json(tiny_models, tmp_path, *args.split())
    assert list(report["ablation"]) == ["dpo", "sft", "sft+dpo", "sft+dpo+kto", "rm+rl", "sft+rm+rl"]
    assert all(report["feedback"][kind]["total"] for kind in ("demonstrations", "pairs", "ratings"))
    # The same recorded feedback, each objective taking all of its own kinds and nothing else.
    assert {name: f["learned_from"] for name, f in report["ablation"].items()} == learned_by_objective(report)
    for name, figures in report["ablation"].items():
        assert {"win_rate", "ppl_sft", "kl", "mean_length", "seconds"} <= figures.keys(), name
        # Each version is its own adapter, and what it answers is its own: KL is 0 only for the SFT model itself.
        assert figures["kl"] > 0 and figures["steps"] > 0, (name, figures)
        # The RL objectives: how often their reward model orders held-out answers as the oracle does.
        assert ("reward_model_agreement" in figures) == name.endswith("rm+rl"), name
    assert len(set(report["adapters"].values())) == 6 and all(Path(p).is_dir() for p in report["adapters"].values())
    assert report["baseline"]["kl"] == 0 and report["baseline"]["win_rate"] == 0.5
    assert report["heldout_prompts"] == 2 and report["heldout_overlap_dropped"] == 0
    # The real data set of these models keeps it for its Stages view; the simulated feedback stays in the workspace.
    real = DataSet.for_models(tmp_path, str(tiny_models["base"]), str(tiny_models["sft"])).open_store()
    assert real.latest_ablation()["ablation"] == report["ablation"] and real.counts()["votes"] == 0


@pytest.mark.slow
def test_an_ablation_on_votes_alone_trains_dpo_and_notes_the_objectives_it_cannot_train(tiny_models, tmp_path):
    from playground.data_sets import DataSet
    from playground.ui.stages import ablation_markdown

    prompts, heldout = tmp_path / "prompts.jsonl", tmp_path / "heldout.jsonl"
    voted = ["What is a cat?", "Name three rivers.", "Write a haiku.", "Why do we sleep?"]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in voted))
    held = ["Why is the sky blue?", "  what is a CAT?", "Describe a storm."]
    heldout.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in held))
    args = f"--oracle shorter --votes 6 --ablation --prompts {prompts} --heldout {heldout} --max-new-tokens 10"
    report = simulate_json(tiny_models, tmp_path / "data", *args.split())
    assert report["heldout_prompts"] == 2 and report["heldout_overlap_dropped"] == 1
    assert report["feedback"]["pairs"]["total"] > 0 and report["votes"]["corrections"] == 0
    dpo, rl = report["ablation"].pop("dpo"), report["ablation"].pop("rm+rl")
    assert report["ablation"] == {
        "sft": {"skipped": "no demonstrations recorded"},
        "sft+dpo": {"skipped": "no demonstrations recorded"},
        "sft+dpo+kto": {"skipped": "no demonstrations or ratings recorded"},
        "sft+rm+rl": {"skipped": "no demonstrations recorded"},
    }
    pairs_only = {"demonstrations": 0, "pairs": report["feedback"]["pairs"]["total"], "ratings": 0}
    assert dpo["learned_from"] == rl["learned_from"] == pairs_only
    assert dpo["kl"] > 0 and rl["kl"] > 0 and list(report["adapters"]) == ["dpo", "rm+rl"]
    # The Stages view shows the note where the figures would be.
    real = DataSet.for_models(tmp_path / "data", str(tiny_models["base"]), str(tiny_models["sft"])).open_store()
    view = ablation_markdown(real.latest_ablation())
    assert "| dpo | preference only | " in view
    assert "| sft+dpo | both | skipped: no demonstrations recorded | – |" in view


@pytest.mark.slow
def test_bench_votes_runs_simulate_per_seed_and_says_whether_the_goal_was_met(tiny_models, tmp_path):
    """`bench votes`: the real simulate command, one run per seed at the pace asked, its held-out figures, fluency
    and loop time per run."""
    sim = f"--base {tiny_models['base']} --sft {tiny_models['sft']} --max-new-tokens 8 --min-pairs 2 --epochs 1 "
    sim += "--train-threads 1 --learning-rate 5e-2 --eval-tokens 0 --heldout-limit 2"
    command = [sys.executable, "-m", "playground", "bench", "votes", "--runs", "2", "--votes", "3"]
    command += ["--runtime", "torch", "--vote-seconds", "0.5", "--sim-args", sim, "--data-dir", str(tmp_path), "--json"]
    done = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    figures, runs = result["figures"], result["figures"]["runs"]
    assert result["suite"] == "votes" and result["machine"]["cpu"]
    assert len(runs) == 2 and runs[0]["workspace"] != runs[1]["workspace"]
    for run in runs:
        assert {"win_rate", "win_rate_se", "ties", "win_rate_decided", "mean_new_tokens", "hit_limit"} <= run.keys()
        assert {"ppl_ratio", "distinct_2", "kl"} <= run.keys() and run["vote_seconds"] == 0.5
        assert run["seconds"]["loop"] > 0 and run["pairs"] >= 1
    assert figures["win_rate"] == pytest.approx((runs[0]["win_rate"] + runs[1]["win_rate"]) / 2)
    # No goal of issue 37 at this pace: issue 29's (win rate ≥ 0.75 with the loop within 8 minutes).
    assert figures["goal"] == {"win_rate": 0.75, "loop_s": 480, "ppl_ratio": None, "distinct_2": None}
    met = figures["win_rate"] >= 0.75 and figures["loop_s"] <= 480
    assert figures["goal_met"] is met


class FakeAnswer:
    def __init__(self, text: str, finish_reason: str = "eos"):
        self.text, self.finish_reason, self.new_tokens = text, finish_reason, len(text.split())


class FakeStore:
    """What simulate() asks of the store: votes are logged, no round is pending, version 1 serves at the end."""

    def __init__(self, events: list, evals: list[dict]):
        self.events, self.evals = events, evals

    def vote_pairwise(self, session, comparison, a, b, outcome):
        self.events.append(("vote", comparison))
        return _receipt(outcome != "tie")

    def vote_best(self, session, comparison, order):
        self.events.append(("vote", comparison))
        return _receipt(len(order) - 1)

    def pending_counts(self, kinds):
        return dict.fromkeys(kinds, 0)

    def running_round(self):
        return None

    def serving_version(self):
        return 1

    def versions_missing_eval(self, key):
        return []

    def rounds(self):
        return []

    def version_evals(self):
        return self.evals


def _receipt(pairs: int):
    from types import SimpleNamespace

    return SimpleNamespace(pairs_created=int(pairs))


# Known held-out answers (before the rounds the preference-tuned arm answers as SFT does) and their NLL under SFT.
SFT_TEXTS = {"Why is the sky blue?": "the cat sat down", "Name a river.": "the cat ran"}
PREF_TEXTS = {"Why is the sky blue?": "yes yes yes", "Name a river.": "no"}
NLL = {"the cat sat down": 1.0, "the cat ran": 2.0, "yes yes yes": 3.0, "no": 3.0}


class FakePlayground:
    """A playground whose answers are known texts: version 0 serves until the first sync after a vote, then v1,
    whose drift the trainer measured (KL 0.25)."""

    def __init__(self, events: list):
        from types import SimpleNamespace

        from playground import drift
        from playground.settings import RoundSettings

        self.events = events
        self.round_settings = RoundSettings()
        eval_key = drift.plan_of(self.round_settings).key
        evals = [
            {"version": 0, "eval_set": eval_key, "metrics": {"kl_to_sft": 0.0}},
            {"version": 1, "eval_set": eval_key, "metrics": {"kl_to_sft": 0.25, "distinct_2": 0.8}},
        ]
        self.store = FakeStore(events, evals)
        self.engine = SimpleNamespace(adapter_version=0, generate=self.generate, scoring=self)
        self.judging = SimpleNamespace(judge_pending=lambda: events.append(("judge",)))
        self.dashboard = SimpleNamespace(facts=lambda: {"versions": []})
        self.turns = 0

    def _turn(self, keys):
        from types import SimpleNamespace

        self.turns += 1
        self.events.append(("answers", self.turns))
        answers = {k: FakeAnswer("word " * (i + 1)) for i, k in enumerate(keys)}
        return [
            (answers, SimpleNamespace(comparison_id=self.turns, answer_ids={k: 10 + i for i, k in enumerate(keys)}))
        ]

    def duel(self, prompt, settings, session, category=None):
        return self._turn("ab")

    def compare(self, prompt, settings, session, category=None):
        return self._turn(("base", "sft", "pref"))

    def sync_adapter(self):
        self.events.append(("sync",))
        self.engine.adapter_version = 1
        return 1

    def generate(self, prompt, settings, arms):
        pref = PREF_TEXTS[prompt] if self.engine.adapter_version else SFT_TEXTS[prompt]
        return {"sft": FakeAnswer(SFT_TEXTS[prompt]), "pref": FakeAnswer(pref, "length" if "yes" in pref else "eos")}

    def sft_nll(self, prompt, text):
        return NLL[text]

    def start_trainer(self):
        self.events.append(("trainer", "start"))

    def stop_trainer(self):
        self.events.append(("trainer", "stop"))

    def train_now(self):
        raise AssertionError("nothing was pending")


def read_log(monkeypatch, events: list) -> None:
    """The voter's reading, logged instead of slept."""
    import playground.simulate as simulation

    monkeypatch.setattr(simulation, "read_answers", lambda seconds: events.append(("read", seconds)))


@pytest.mark.parametrize("mode", ["pairwise", "best-of-three"])
def test_a_paced_voter_reads_each_turns_answers_before_its_vote(monkeypatch, mode):
    import random

    from playground.settings import Sampling
    from playground.simulate import collect_votes

    events: list = []
    read_log(monkeypatch, events)
    playground = FakePlayground(events)
    prompts = rows("What is a cat?", "Name three rivers.")
    args = (Oracle.parse("shorter"), 3, prompts, mode, Sampling(max_new_tokens=8), random.Random(0))
    counts = collect_votes(playground, *args, vote_seconds=12.5)
    assert counts["votes"] == 3
    # Each turn: the answers, the reading, the vote, then what a page does after a vote (judge, follow the version).
    turn = lambda i: [("answers", i), ("read", 12.5), ("vote", i), ("judge",), ("sync",)]  # noqa: E731
    assert events == turn(1) + turn(2) + turn(3)
    # Flat out (the default): no reading at all.
    events.clear()
    collect_votes(FakePlayground(events), *args)
    assert ("read", 12.5) not in events and not [e for e in events if e[0] == "read"]
    assert [e[0] for e in events].count("vote") == 3


def test_a_negative_or_endless_pace_is_refused(tmp_path, capsys, monkeypatch):
    import random

    from playground.cli import main
    from playground.settings import Sampling
    from playground.simulate import collect_votes

    events: list = []
    read_log(monkeypatch, events)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--vote-seconds must be 0 or more"):
            collect_votes(
                FakePlayground(events),
                Oracle.parse("shorter"),
                2,
                rows("Hi?"),
                "pairwise",
                Sampling(),
                random.Random(0),
                vote_seconds=bad,
            )
    assert events == [], "refused before the first turn"
    argv = ["-q", "simulate", "--oracle", "shorter", "--votes", "1", "--vote-seconds", "-2"]
    code = main([*argv, "--data-dir", str(tmp_path / "data"), "--sft", "no-such-model"])
    assert code == 2 and "--vote-seconds must be 0 or more seconds, not -2.0" in capsys.readouterr().err
    assert not (tmp_path / "data").exists(), "refused before anything was made or loaded"


def test_simulate_reports_its_pace_and_the_fluency_of_the_heldout_answers(monkeypatch):
    import math

    from playground.settings import Sampling
    from playground.simulate import simulate

    events: list = []
    read_log(monkeypatch, events)
    playground = FakePlayground(events)
    heldout = rows(*SFT_TEXTS)
    report = simulate(
        playground,
        Oracle.parse("shorter"),
        2,
        rows("What is a cat?"),
        heldout,
        sampling=Sampling(max_new_tokens=3),
        vote_seconds=4,
    )
    assert report["vote_seconds"] == 4 and events.count(("read", 4)) == 2
    assert events.index(("trainer", "start")) < events.index(("read", 4)) < events.index(("trainer", "stop"))
    before, after = report["before"], report["after"]
    # Before: the preference-tuned arm is the SFT model, so it reads exactly as SFT does.
    assert before["ppl_ratio"] == pytest.approx(1.0) and before["distinct_2"] == {"sft": 1.0, "pref": 1.0}
    # After, per answer: each SFT answer repeats no bigram (1.0); pref's "yes yes yes" has (yes yes)x2, 1 of 2, and
    # "no" no bigram at all (left out). Over all answers: SFT's (the cat)x2 (cat sat) (sat down) (cat ran), 4 of 5.
    assert after["distinct_2"] == {"sft": 1.0, "pref": 0.5}
    assert after["distinct_2_corpus"] == {"sft": 0.8, "pref": 0.5} and before["distinct_2_corpus"]["pref"] == 0.8
    assert after["fluency_sft_perplexity"]["sft"] == pytest.approx(math.exp(1.5))
    assert after["ppl_ratio"] == pytest.approx(math.exp(3.0) / math.exp(1.5))
    assert after["mean_new_tokens"] == {"sft": 3.5, "pref": 2.0} and after["hit_limit"] == {"sft": 0.0, "pref": 0.5}
    assert report["fluency"] == {
        "ppl_ratio": after["ppl_ratio"],
        "distinct_2": 0.5,
        "kl": 0.25,  # the serving version's (v1), not v0's
        "mean_new_tokens": {"sft": 3.5, "pref": 2.0},
        "hit_limit": {"sft": 0.0, "pref": 0.5},
    }
    assert report["win_rate"] == after["win_rate"] == 1.0
    # The text report prints them.
    from playground.cli.reports import simulation_text

    text = simulation_text(report | {"workspace": "w"}, "pairwise")
    assert "each read 4 s before its vote" in text
    assert "(ratio 4.48); distinct-2 sft 1.00  pref 0.50; KL to SFT (v1, drift prompts) 0.250" in text
    assert "cut at the token limit: sft 0%  pref 50%" in text


def test_fluency_without_a_measured_perplexity_or_drift_is_none():
    from playground.simulate import fluency, perplexity_ratio

    assert perplexity_ratio({"sft": None, "pref": 3.0}) is None and perplexity_ratio({"sft": 2.0, "pref": 3.0}) == 1.5
    after = {
        "ppl_ratio": None,
        "distinct_2": {"sft": None, "pref": None},
        "adapter_version": 2,
        "mean_new_tokens": {"sft": 1.0, "pref": 1.0},
        "hit_limit": {"sft": 0.0, "pref": 0.0},
    }
    assert fluency(after, {"v1": {"kl_to_sft": 0.3}})["kl"] is None, "v2 serves: v1's KL is not its"
