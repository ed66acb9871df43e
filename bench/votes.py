"""How much a vote moves the model: the real loop driven by the simulated voter, measured on held-out prompts.

    python -m playground bench votes [--runs R] [--runtime onnx|torch] [--oracle shorter] [--votes 32]
        [--prompts FILE --heldout FILE] [--heldout-samples K] [--seed S] [--sim-args "..."] [--json]

Each run is `python -m playground simulate --mode pairwise --json` in its own process, as a user runs it, with run r
using `--seed S + r` (other votes, other held-out seeds). Defaults: 32 votes of `shorter` on bench/prompts'
issue-29 split (24 prompts to vote on, 40 held out, none of them in assets/). Per run it reports the held-out figures
after the rounds (win rate with ties ½, its standard error, ties, win rate among the decided comparisons, tokens per
arm, the share cut at the token limit), the last version's drift (KL to SFT, perplexity under SFT, distinct-2) and
`seconds.loop` (voting and the last round, without the held-out evaluations); then their mean over the runs, and
whether the goal of issue 29 was met (win rate ≥ 0.75 with the loop within 8 minutes). `--sim-args` passes more
options to simulate (e.g. `"--dpo-reference previous --learning-rate 5e-4"`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "bench" / "prompts" / "issue29-train.jsonl"
HELDOUT = ROOT / "bench" / "prompts" / "issue29-heldout.jsonl"
GOAL_WIN_RATE, GOAL_LOOP_S = 0.75, 8 * 60


def simulate(args, seed: int) -> dict:
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
        args.oracle,
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
    after = report["after"]
    last = report["drift"].get(f"v{after['adapter_version']}", {})
    return {
        "win_rate": after["win_rate"],
        "win_rate_se": after["win_rate_se"],
        "ties": after["ties"],
        "win_rate_decided": after["win_rate_decided"],
        "mean_new_tokens": after["mean_new_tokens"],
        "hit_limit": after["hit_limit"],
        "sft_perplexity": after["fluency_sft_perplexity"],
        "drift": {key: last.get(key) for key in ("kl_to_sft", "sft_perplexity", "distinct_2")},
        "pairs": report["votes"]["pairs"],
        "rounds": [{"pairs": r["pairs_used"], "seconds": round(r["seconds"])} for r in report["rounds"]],
        "seconds": report["seconds"],
        "workspace": report["workspace"],
    }


def run(args) -> dict:
    from bench.common import report

    runs = [figures_of(simulate(args, args.seed + r)) for r in range(args.runs)]
    win_rate = statistics.fmean(r["win_rate"] for r in runs)
    loop_s = statistics.fmean(r["seconds"]["loop"] for r in runs)
    summary = {
        "runs": runs,
        "win_rate": win_rate,
        "win_rate_spread": statistics.stdev([r["win_rate"] for r in runs]) if len(runs) > 1 else None,
        "ties": statistics.fmean(r["ties"] for r in runs),
        "loop_s": loop_s,
        "goal_met": win_rate >= GOAL_WIN_RATE and loop_s <= GOAL_LOOP_S,
    }
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    return report("votes", settings, summary, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="runs, each with its own seed")
    parser.add_argument("--runtime", default="onnx", choices=("onnx", "torch"))
    parser.add_argument("--oracle", default="shorter")
    parser.add_argument("--votes", type=int, default=32)
    parser.add_argument("--prompts", default=str(PROMPTS))
    parser.add_argument("--heldout", default=str(HELDOUT))
    parser.add_argument("--heldout-samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="the first run's seed")
    parser.add_argument("--sim-args", default="", help="more simulate options, as one string")
    parser.add_argument("--data-dir", default=None, help="whose model cache the runs use (default: the app's own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    run(args)


if __name__ == "__main__":
    main()
