"""`bench votes`: its goals, its summary and the --matrix table, from fake simulate reports (no model runs)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench import votes

# Per cell (oracle, pace): each run's (win rate, loop seconds, ppl ratio, distinct-2, KL), the run's seed its index.
FAKE_RUNS = {
    ("shorter", 0): [(0.9, 300, 1.2, 0.95, 0.1), (0.8, 400, 1.4, 0.95, 0.3)],  # met: 0.85 ≥ 0.80, 350 ≤ 360
    ("shorter", 10): [(0.9, 500, 1.2, 0.95, 0.1), (0.9, 520, 1.2, 0.95, 0.1)],  # loop 510 > 480
    ("plain", 0): [(0.8, 300, 1.6, 0.95, 0.1), (0.8, 300, 1.7, 0.95, 0.1)],  # ppl ratio 1.65 > 1.5
    ("plain", 10): [(0.8, 580, 1.1, 0.92, None), (0.8, 590, 1.1, 0.92, 0.2)],  # met: loop 585 ≤ 600 at this pace
}
MET = {("shorter", 0): True, ("shorter", 10): False, ("plain", 0): False, ("plain", 10): True}


def fake_report(oracle: str, vote_seconds: float, seed: int) -> dict:
    win, loop, ppl, d2, kl = FAKE_RUNS.get((oracle, vote_seconds), FAKE_RUNS[("shorter", 0)])[seed]
    after = {
        "win_rate": win,
        "win_rate_se": 0.05,
        "ties": 0.1,
        "win_rate_decided": None if seed else win,
        "mean_new_tokens": {"sft": 40.0, "pref": 20.0 + seed},
        "hit_limit": {"sft": 0.5, "pref": 0.0},
        "fluency_sft_perplexity": {"sft": 2.0, "pref": 2.0 * ppl},
        "distinct_2": {"sft": 0.93, "pref": d2},
        "adapter_version": 3,
    }
    return {
        "oracle": oracle,
        "vote_seconds": vote_seconds,
        "after": after,
        "fluency": {"ppl_ratio": ppl, "distinct_2": d2, "kl": kl}
        | {k: after[k] for k in ("mean_new_tokens", "hit_limit")},
        "drift": {"v3": {"kl_to_sft": kl, "sft_perplexity": 2.5, "distinct_2": d2, "mean_tokens": 20}},
        "votes": {"pairs": 30},
        "rounds": [{"pairs_used": 30, "seconds": 100.4}],
        "seconds": {"voting": loop - 50, "loop": loop, "evaluation": 60, "total": loop + 60},
        "workspace": f"/sims/{oracle}-{vote_seconds}-{seed}",
    }


@pytest.fixture
def calls(monkeypatch) -> list:
    """simulate runs as (oracle, pace, seed), each answered with `fake_report`; no machine facts read."""
    made = []

    def simulate(args, seed, oracle, vote_seconds):
        made.append((oracle, vote_seconds, seed))
        return fake_report(oracle, vote_seconds, seed)

    monkeypatch.setattr(votes, "simulate", simulate)
    monkeypatch.setattr("bench.common.machine", lambda: {"cpu": {"model": "test"}})
    monkeypatch.setattr("bench.common.versions", lambda: {})
    return made


def test_the_matrix_runs_every_oracle_and_pace_twice_and_reports_each_cell_against_its_goal(calls, capsys):
    result = votes.main(["--matrix", "--json"])
    assert calls == [(o, p, s) for o in ("shorter", "plain") for p in (0.0, 10.0) for s in (0, 1)]
    printed = json.loads(capsys.readouterr().out)
    assert printed["figures"] == json.loads(json.dumps(result["figures"]))
    cells = printed["figures"]["cells"]
    assert [(c["oracle"], c["vote_seconds"]) for c in cells] == list(MET)
    for cell in cells:
        key = (cell["oracle"], cell["vote_seconds"])
        runs = FAKE_RUNS[key]
        assert cell["win_rate"] == pytest.approx(sum(r[0] for r in runs) / 2)
        assert cell["loop_s"] == pytest.approx(sum(r[1] for r in runs) / 2)
        assert cell["ppl_ratio"] == pytest.approx(sum(r[2] for r in runs) / 2)
        assert cell["distinct_2"] == pytest.approx(sum(r[3] for r in runs) / 2)
        assert cell["win_rate_se"] == pytest.approx(0.05) and cell["ties"] == pytest.approx(0.1)
        assert cell["win_rate_decided"] == pytest.approx(runs[0][0]), "the mean of the runs that measured it"
        assert cell["goal_met"] is MET[key], key
        assert [r["win_rate"] for r in cell["runs"]] == [r[0] for r in runs]
        assert cell["runs"][0]["ppl_ratio"] == runs[0][2] and cell["runs"][1]["vote_seconds"] == key[1]
        assert cell["goal"] == votes.GOALS[key]._asdict()
    assert cells[3]["kl"] == pytest.approx(0.2), "a run without a measured KL is left out of the mean"
    assert printed["figures"]["goals_met"] == 2
    assert printed["settings"]["oracle"] == ["shorter", "plain"] and printed["settings"]["runs"] == 2


def test_the_matrix_prints_one_table(calls, capsys):
    votes.main(["--matrix", "--runs", "1"])
    assert len(calls) == 4, "--runs says how many per cell"
    out = capsys.readouterr().out
    header = "| oracle | pace (s/vote) | win rate ± se | ties | decided win rate | ppl ratio | distinct-2 | KL | loop s | goal met |"
    assert header in out
    assert (
        "| shorter | 0 | 0.90 ± 0.05 | 10% | 0.90 | 1.20 | 0.95 | 0.100 | 300 | yes (win rate ≥ 0.80, loop ≤ 360 s) |"
        in out
    )
    assert (
        "| shorter | 10 | 0.90 ± 0.05 | 10% | 0.90 | 1.20 | 0.95 | 0.100 | 500 | no (win rate ≥ 0.85, loop ≤ 480 s) |"
        in out
    )
    assert (
        "| plain | 10 | 0.80 ± 0.05 | 10% | 0.80 | 1.10 | 0.92 | – | 580 | yes (win rate ≥ 0.75, loop ≤ 600 s) |" in out
    )
    assert "every goal also: ppl ratio ≤ 1.5, distinct-2 ≥ 0.9" in out and "2 of 4 cells met their goal" in out


def test_one_oracle_and_pace_keeps_its_summary_with_the_fluency_keys_and_the_goal_table(calls, capsys):
    figures = votes.main(["--json", "--oracle", "plain", "--vote-seconds", "10"])["figures"]
    assert calls == [("plain", 10.0, 0)], "one run by default"
    assert {"runs", "win_rate", "win_rate_spread", "ties", "loop_s", "goal_met"} <= figures.keys()
    assert figures["ppl_ratio"] == 1.1 and figures["distinct_2"] == 0.92 and figures["kl"] is None
    assert all(run["distinct_2_sft"] == 0.93 for run in figures["runs"]), "SFT's own, to read distinct-2 against"
    assert figures["mean_new_tokens"] == {"sft": 40.0, "pref": 20.0} and figures["hit_limit"]["sft"] == 0.5
    assert figures["goal"] == votes.GOALS[("plain", 10)]._asdict() and figures["goal_met"] is True
    # An oracle without an entry: issue 29's goal (win rate ≥ 0.75, loop ≤ 480 s), no fluency clause.
    calls.clear()
    figures = votes.main(["--json", "--oracle", "contains:please", "--runs", "2"])["figures"]
    assert calls == [("contains:please", 0.0, 0), ("contains:please", 0.0, 1)]
    assert figures["goal"] == {"win_rate": 0.75, "loop_s": 480, "ppl_ratio": None, "distinct_2": None}
    assert figures["win_rate"] == pytest.approx(0.85) and figures["loop_s"] == 350 and figures["goal_met"] is True
    capsys.readouterr()


def test_goal_met_needs_every_clause_and_says_none_when_a_figure_is_missing():
    goal = votes.GOALS[("shorter", 0)]
    good = {"win_rate": 0.8, "loop_s": 360, "ppl_ratio": 1.5, "distinct_2": 0.9}
    assert votes.goal_met(good, goal) is True, "the bounds themselves meet it"
    for key, bad in (("win_rate", 0.79), ("loop_s", 361), ("ppl_ratio", 1.51), ("distinct_2", 0.89)):
        assert votes.goal_met(good | {key: bad}, goal) is False, key
    assert votes.goal_met(good | {"ppl_ratio": None}, goal) is None
    assert votes.goal_met(good | {"ppl_ratio": None}, votes.GOALS[None]) is True, "issue 29's goal has no such clause"


def test_bench_votes_passes_the_pace_to_simulate_and_refuses_what_it_cannot_run(monkeypatch, capsys):
    seen = []

    def run(command, **kwargs):
        seen.append(command)
        return SimpleNamespace(returncode=0, stdout=json.dumps(fake_report("shorter", 7.5, 0)))

    monkeypatch.setattr(votes.subprocess, "run", run)
    args = votes.argparse.Namespace(
        votes=3,
        prompts="p.jsonl",
        heldout="h.jsonl",
        heldout_samples=1,
        runtime="torch",
        data_dir=None,
        sim_args="--epochs 1",
    )
    assert votes.simulate(args, 5, "plain", 7.5)["vote_seconds"] == 7.5
    command = seen[0]
    assert command[command.index("--vote-seconds") + 1] == "7.5" and command[command.index("--oracle") + 1] == "plain"
    assert command[command.index("--seed") + 1] == "5" and command[-2:] == ["--epochs", "1"]
    for argv in (
        ["--vote-seconds", "-1"],
        ["--matrix", "--oracle", "plain"],
        ["--matrix", "--vote-seconds", "0"],
        ["--runs", "0"],
    ):
        with pytest.raises(SystemExit) as exited:
            votes.main(argv)
        assert exited.value.code == 2, argv
    assert not seen[1:], "refused before any run"
    err = capsys.readouterr().err
    assert "--vote-seconds must be 0 or more seconds" in err and "--matrix runs every oracle and pace" in err
