"""How much a vote moves the model: the real loop driven by the simulated voter, measured on held-out prompts.

    python -m playground bench votes [--runs R] [--runtime onnx|torch] [--oracle shorter] [--votes 32]
        [--vote-seconds S] [--prompts FILE --heldout FILE] [--heldout-samples K] [--seed S] [--sim-args "..."] [--json]
    python -m playground bench votes --matrix [--runs R] [...the options above but --oracle and --vote-seconds]

Each run is `python -m playground simulate --mode pairwise --json` in its own process, as a user runs it, with run r
using `--seed S + r` (other votes, other held-out seeds). Defaults: 32 votes of `shorter` on bench/prompts'
issue-29 split (24 prompts to vote on, 40 held out, none of them in assets/), voted flat out (`--vote-seconds 0`,
like a class voting at once; `--vote-seconds S`: the voter reads each turn's answers S seconds before it votes, while
the trainer keeps training). Per run it reports the held-out figures after the rounds (win rate with ties ½, its
standard error, ties, win rate among the decided comparisons, tokens per arm, the share cut at the token limit), the
fluency price (`ppl_ratio`: the preference-tuned answers' perplexity under SFT over the SFT answers' own;
`distinct_2` of the preference-tuned answers; `kl`: the last version's KL to SFT on the drift prompts), the last
version's drift and `seconds.loop` (voting and the last round, without the held-out evaluations); then their mean
over the runs, and whether the goal was met (`GOALS`: issue 37's per oracle and pace, fluency included; issue 29's,
win rate ≥ 0.75 with the loop within 8 minutes, for any other oracle or pace).

`--matrix`: the default route over oracle {shorter, plain} × pace {0, 10 s per vote}, `--runs` runs per cell
(default 2, the same seeds in every cell), printed as one table (oracle, pace, win rate ± se, ties, decided win
rate, ppl ratio, distinct-2, KL, loop seconds, goal met); `--json` gives each cell's means under `cells` (`oracle`,
`vote_seconds`, `win_rate`, `win_rate_se`, `ties`, `win_rate_decided`, `ppl_ratio`, `distinct_2`, `kl`, `loop_s`,
`goal`, `goal_met`) with its runs' own figures under `runs`. Each run's figures go to stderr as it ends.
`--sim-args` passes more options to simulate (e.g. `"--dpo-reference previous --learning-rate 5e-4"`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "bench" / "prompts" / "issue29-train.jsonl"
HELDOUT = ROOT / "bench" / "prompts" / "issue29-heldout.jsonl"


class Goal(NamedTuple):
    """A cell's goal, on the means over its runs; None: no clause on that figure."""

    win_rate: float  # at least
    loop_s: float  # at most
    ppl_ratio: float | None  # at most
    distinct_2: float | None  # at least


# The goals per (oracle, seconds per vote) of issue 37; None: any other run, held to issue 29's goal.
GOALS: dict[tuple[str, float] | None, Goal] = {
    ("shorter", 0): Goal(win_rate=0.80, loop_s=360, ppl_ratio=1.5, distinct_2=0.9),
    ("shorter", 10): Goal(win_rate=0.85, loop_s=480, ppl_ratio=1.5, distinct_2=0.9),
    ("plain", 0): Goal(win_rate=0.75, loop_s=480, ppl_ratio=1.5, distinct_2=0.9),
    ("plain", 10): Goal(win_rate=0.75, loop_s=600, ppl_ratio=1.5, distinct_2=0.9),
    None: Goal(win_rate=0.75, loop_s=8 * 60, ppl_ratio=None, distinct_2=None),
}
MATRIX_ORACLES, MATRIX_PACES = ("shorter", "plain"), (0.0, 10.0)
MATRIX_RUNS = 2  # runs per cell unless --runs says


def goal_of(oracle: str, vote_seconds: float) -> Goal:
    return GOALS.get((oracle, vote_seconds), GOALS[None])


def goal_met(cell: dict, goal: Goal) -> bool | None:
    """Whether the cell's means meet `goal`; None when a figure it needs was not measured."""
    floors = {"win_rate": goal.win_rate, "distinct_2": goal.distinct_2}
    ceilings = {"loop_s": goal.loop_s, "ppl_ratio": goal.ppl_ratio}
    needed = [k for k, v in (floors | ceilings).items() if v is not None]
    if any(cell.get(k) is None for k in needed):
        return None
    return all(cell[k] >= v for k, v in floors.items() if v is not None) and all(
        cell[k] <= v for k, v in ceilings.items() if v is not None
    )


def simulate(args, seed: int, oracle: str, vote_seconds: float) -> dict:
    """One simulate run's report; when it fails, the tail of its log (stderr) is the error."""
    command = [
        sys.executable,
        "-m",
        "playground",
        "-q",
        "simulate",
        "--mode",
        "pairwise",
        "--oracle",
        oracle,
        "--vote-seconds",
        f"{vote_seconds:g}",
        "--votes",
        str(args.votes),
        "--prompts",
        args.prompts,
        "--heldout",
        args.heldout,
        "--heldout-samples",
        str(args.heldout_samples),
        "--runtime",
        args.runtime,
        "--seed",
        str(seed),
        "--json",
        *(["--data-dir", args.data_dir] if args.data_dir else []),
        *shlex.split(args.sim_args),
    ]
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=os.environ)
        if done.returncode:
            log.seek(0)
            raise SystemExit(f"simulate failed ({done.returncode}): {' '.join(command)}\n{log.read()[-3000:]}")
    return json.loads(done.stdout)


def figures_of(report: dict) -> dict:
    after, fluency = report["after"], report["fluency"]
    last = report["drift"].get(f"v{after['adapter_version']}", {})
    return {
        "oracle": report["oracle"],
        "vote_seconds": report["vote_seconds"],
        "win_rate": after["win_rate"],
        "win_rate_se": after["win_rate_se"],
        "ties": after["ties"],
        "win_rate_decided": after["win_rate_decided"],
        "ppl_ratio": fluency["ppl_ratio"],
        "distinct_2": fluency["distinct_2"],
        # The SFT model's own answers to the same prompts and seeds: what distinct-2 is to be read against.
        "distinct_2_sft": after["distinct_2"]["sft"],
        "kl": fluency["kl"],
        "mean_new_tokens": after["mean_new_tokens"],
        "hit_limit": after["hit_limit"],
        "sft_perplexity": after["fluency_sft_perplexity"],
        "drift": {key: last.get(key) for key in ("kl_to_sft", "sft_perplexity", "distinct_2")},
        "pairs": report["votes"]["pairs"],
        "rounds": [{"pairs": r["pairs_used"], "seconds": round(r["seconds"])} for r in report["rounds"]],
        "seconds": report["seconds"],
        "workspace": report["workspace"],
    }


def mean_of(values) -> float | None:
    """The mean of the measured values (None where none was)."""
    measured = [v for v in values if v is not None]
    return statistics.fmean(measured) if measured else None


def cell_of(oracle: str, vote_seconds: float, runs: list[dict]) -> dict:
    """One (oracle, pace)'s means over its runs, its goal and whether they meet it; the runs' own under `runs`."""
    cell = {
        "oracle": oracle,
        "vote_seconds": vote_seconds,
        **{
            key: mean_of(r[key] for r in runs)
            for key in ("win_rate", "win_rate_se", "ties", "win_rate_decided", "ppl_ratio", "distinct_2", "kl")
        },
        "win_rate_spread": statistics.stdev([r["win_rate"] for r in runs]) if len(runs) > 1 else None,
        "mean_new_tokens": {arm: mean_of(r["mean_new_tokens"][arm] for r in runs) for arm in ("sft", "pref")},
        "hit_limit": {arm: mean_of(r["hit_limit"][arm] for r in runs) for arm in ("sft", "pref")},
        "loop_s": statistics.fmean(r["seconds"]["loop"] for r in runs),
    }
    goal = goal_of(oracle, vote_seconds)
    return cell | {"goal": goal._asdict(), "goal_met": goal_met(cell, goal), "runs": runs}


def cell_runs(args, oracle: str, vote_seconds: float, runs: int) -> list[dict]:
    """`runs` simulate runs of one (oracle, pace), seeds `--seed` + r; each one's figures to stderr as it ends."""
    out = []
    for r in range(runs):
        figures = figures_of(simulate(args, args.seed + r, oracle, vote_seconds))
        print(f"votes: {oracle} at {vote_seconds:g} s/vote, run {r + 1}/{runs}: {json.dumps(figures)}", file=sys.stderr)
        out.append(figures)
    return out


def _cell_text(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def goal_text(goal: dict) -> str:
    return f"win rate ≥ {goal['win_rate']:.2f}, loop ≤ {goal['loop_s']:.0f} s"


def matrix_table(cells: list[dict]) -> str:
    """The matrix as a Markdown table, one row per cell, each figure the mean over its runs."""
    lines = [
        "| oracle | pace (s/vote) | win rate ± se | ties | decided win rate | ppl ratio | distinct-2 | KL | loop s "
        "| goal met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        met = {True: "yes", False: "no", None: "– (not measured)"}[c["goal_met"]]
        lines.append(
            f"| {c['oracle']} | {c['vote_seconds']:g} | {_cell_text(c['win_rate'], '.2f')} ± "
            f"{_cell_text(c['win_rate_se'], '.2f')} | {_cell_text(c['ties'], '.0%')} | "
            f"{_cell_text(c['win_rate_decided'], '.2f')} | {_cell_text(c['ppl_ratio'], '.2f')} | "
            f"{_cell_text(c['distinct_2'], '.2f')} | {_cell_text(c['kl'], '.3f')} | {c['loop_s']:.0f} | "
            f"{met} ({goal_text(c['goal'])}) |"
        )
    runs = {len(c["runs"]) for c in cells}
    fluency = {(c["goal"]["ppl_ratio"], c["goal"]["distinct_2"]) for c in cells}
    notes = [f"means over {'/'.join(map(str, sorted(runs)))} runs per cell"]
    notes += [f"every goal also: ppl ratio ≤ {p:g}, distinct-2 ≥ {d:g}" for p, d in fluency if p is not None]
    return "\n".join(lines) + "\n" + "; ".join(notes) + "\n"


def run(args) -> dict:
    from bench.common import machine, report, versions

    settings = {k: v for k, v in vars(args).items() if k != "json"}
    if not args.matrix:
        runs = cell_runs(args, args.oracle, args.vote_seconds, args.runs)
        return report("votes", settings, cell_of(args.oracle, args.vote_seconds, runs), args.json)
    cells = [
        cell_of(oracle, pace, cell_runs(args, oracle, pace, args.runs))
        for oracle in MATRIX_ORACLES
        for pace in MATRIX_PACES
    ]
    figures = {"cells": cells, "goals_met": sum(c["goal_met"] is True for c in cells)}
    settings |= {"oracle": list(MATRIX_ORACLES), "vote_seconds": list(MATRIX_PACES)}
    if args.json:
        return report("votes", settings, figures, True)
    print(f"votes --matrix: {json.dumps(settings)}")
    print(matrix_table(cells))
    print(f"{figures['goals_met']} of {len(cells)} cells met their goal")
    return {"suite": "votes", "machine": machine(), "versions": versions(), "settings": settings, "figures": figures}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help=f"runs (per cell), each with its own seed; default 1 ({MATRIX_RUNS} with --matrix)",
    )
    parser.add_argument("--runtime", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--oracle", default=None, help="default shorter")
    parser.add_argument("--votes", type=int, default=32)
    parser.add_argument(
        "--vote-seconds",
        type=float,
        default=None,
        metavar="S",
        help="the voter's pace: S seconds reading before each vote (default 0)",
    )
    parser.add_argument(
        "--matrix",
        action="store_true",
        help="every oracle {shorter, plain} × pace {0, 10} with issue 37's goals, one table",
    )
    parser.add_argument("--prompts", default=str(PROMPTS))
    parser.add_argument("--heldout", default=str(HELDOUT))
    parser.add_argument("--heldout-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the first run's seed")
    parser.add_argument("--sim-args", default="", help="more simulate options, as one string")
    parser.add_argument("--data-dir", default=None, help="whose model cache the runs use (default: the app's own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.matrix and (args.oracle is not None or args.vote_seconds is not None):
        parser.error("--matrix runs every oracle and pace of its table: leave out --oracle and --vote-seconds")
    if args.runs is None:
        args.runs = MATRIX_RUNS if args.matrix else 1
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.vote_seconds is not None and not (math.isfinite(args.vote_seconds) and args.vote_seconds >= 0):
        parser.error(f"--vote-seconds must be 0 or more seconds, not {args.vote_seconds}")
    args.oracle = args.oracle or "shorter"
    args.vote_seconds = args.vote_seconds or 0.0
    return run(args)


if __name__ == "__main__":
    main()
