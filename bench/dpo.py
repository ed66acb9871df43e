"""One DPO round on 16 fixed pairs, run exactly as the app's trainer process runs it.

    python bench/dpo.py [--json] [--epochs 1]

Figures: wall time of the round (model load, reference log-probs, training, saving), seconds per optimizer step,
seconds per pair, and the trainer process's peak RSS (the round runs in a child process, as in the app).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(args) -> dict:
    from bench.common import report
    from bench.pairs import fill_store
    from playground import config
    from playground.models import model_folder, resolve_preset
    from playground.store import Store
    from playground.training import RoundSettings

    data_dir = config.resolve_data_dir(args.data_dir)
    preset = resolve_preset(args.preset)
    sft_dir = model_folder(preset.sft, data_dir, False)  # converts once if needed, before timing
    settings = RoundSettings(epochs=args.epochs, threads=args.threads)
    with tempfile.TemporaryDirectory() as work:
        store = Store.open(work)
        fill_store(store, args.pairs)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "playground", "-q", "train", "--once", "--data-dir", work, "--sft", sft_dir,
             "--base", sft_dir, "--epochs", str(args.epochs), "--threads", str(args.threads), "--device", args.device],
            cwd=ROOT, check=True,
        )
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        (rnd,) = store.rounds()
        steps = store.round_steps(rnd["id"])
        train_s = store.version(rnd["version"])["metrics"]["seconds"]
    figures = {
        "round_wall_s": round(wall, 1),
        "train_s": round(train_s, 1),
        "steps": len(steps),
        "seconds_per_step": round(train_s / len(steps), 2),
        "seconds_per_pair": round(wall / (args.pairs * args.epochs), 2),
        "trainer_peak_rss_mb": round(peak_mb),
        "final_loss": round(steps[-1]["loss"], 4),
        "final_reward_accuracy": steps[-1]["reward_accuracy"],
    }
    settings_out = settings.as_dict() | {"preset": preset.name, "pairs": args.pairs, "device": args.device}
    return report("dpo", settings_out, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
