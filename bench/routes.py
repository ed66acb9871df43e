"""The two routes of preference alignment on the same pairs: a DPO round against an `rlhf` round (reward model, then
RL against it), and what the reward model costs a DPO round.

    python -m playground bench routes [--json] [--pairs 16] [--threads 2] [--rl-steps N] [--rl-generations G]
                                      [--rl-completion-tokens T]

The feedback, one store per run: `--pairs` duel votes on fixed pairs (bench/pairs.py). Every run trains one round
from the SFT model with the app's round settings (2 epochs, ...), in this process, memory sampled every 0.25 s:

- dpo: the DPO round, no reward model (`--reward-model false`): the baseline;
- dpo_with_reward_model: the app's default DPO round; its reward model trains after the version is published, so
  `published_s` is what a voter waits for and `round_s` includes the reward model;
- rlhf: `--preference-route rlhf`: the reward model, then RL (GRPO) against it.

Figures: seconds of each (from loading the model to the saved adapter, and to publishing), peak RSS of the process,
the ratio rlhf / dpo (goal: ≤ 3), the reward model's training accuracy, and the RL stage's first and last mean
reward and last KL.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path


def one_round(folder: Path, pairs: int, sft_dir: str, settings) -> dict:
    from bench.common import MemorySampler
    from bench.pairs import fill_store
    from playground.store import Store
    from playground.training import run_round

    store = Store.open(folder)
    fill_store(store, pairs)
    start = time.perf_counter()
    with MemorySampler() as memory, contextlib.redirect_stdout(sys.stderr):  # trl prints; stdout is the JSON
        version = run_round(store, folder / "adapters", sft_dir, settings, force=True)
    seconds = time.perf_counter() - start
    row = store.version(version)
    metrics = row["metrics"]
    published = row["created_at"] - store.rounds()[-1]["started_at"]
    rl = [s for s in store.round_steps() if s["stage"] == "grpo"]
    out = {
        "round_s": round(seconds, 1),
        "published_s": round(published, 1),
        "peak_rss_mb": round(memory.peak.get("server", 0.0)),
        "stage_seconds": {k: round(v, 1) for k, v in metrics["stage_seconds"].items()},
    }
    if metrics.get("reward_model"):
        rm = metrics["reward_model"]
        out["reward_model"] = {k: rm[k] for k in ("pairs", "accuracy_train", "steps")} | {"s": round(rm["seconds"], 1)}
    if rl:
        out["rl"] = {
            "steps": len(rl),
            "first_reward": rl[0]["extra"].get("reward"),
            "last_reward": rl[-1]["extra"].get("reward"),
            "last_kl": rl[-1]["extra"].get("kl"),
            "mean_completion_tokens": rl[-1]["extra"].get("completions/mean_length"),
        }
    return out


def run(args) -> dict:
    from bench.common import report
    from playground.models import model_folder, resolve_preset
    from playground.settings import ModelSettings, RoundSettings

    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    preset = resolve_preset(args.preset)
    sft_dir = model_folder(preset.sft, data_dir, False)  # converts once if needed, before timing
    settings = RoundSettings(train_threads=args.threads, idle_train_threads=args.threads, eval_tokens=0)
    rl = {
        k: v
        for k, v in (
            ("rl_steps", args.rl_steps),
            ("rl_generations", args.rl_generations),
            ("rl_completion_tokens", args.rl_completion_tokens),
        )
        if v is not None
    }
    runs = {
        "dpo": dataclasses.replace(settings, reward_model=False),
        "dpo_with_reward_model": settings,
        "rlhf": dataclasses.replace(settings, preference_route="rlhf", **rl),
    }
    figures = {}
    with tempfile.TemporaryDirectory() as work:
        for name, round_settings in runs.items():
            figures[name] = one_round(Path(work) / name, args.pairs, sft_dir, round_settings)
    figures["ratio_rlhf_to_dpo"] = round(figures["rlhf"]["round_s"] / figures["dpo"]["round_s"], 2)
    figures["reward_model_cost_s"] = round(figures["dpo_with_reward_model"]["round_s"] - figures["dpo"]["round_s"], 1)
    out_settings = runs["rlhf"].as_dict() | {"preset": preset.name, "pairs": args.pairs}
    return report("routes", out_settings, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--pairs", type=int, default=16, help="duel votes, one pair each")
    parser.add_argument("--threads", type=int, default=2, help="the bench has the machine to itself")
    parser.add_argument("--rl-steps", type=int, default=None)
    parser.add_argument("--rl-generations", type=int, default=None)
    parser.add_argument("--rl-completion-tokens", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
