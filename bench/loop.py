"""From the vote that completes a round to the first answer served by the new adapter version.

    python -m bench.loop [--json] [--pairs N]

The real pieces: the app's Playground (models loaded, adapter follower polling), the trainer as its own process
(`train --watch`), the store. `--pairs` − 1 pairs wait; the timer starts when the last vote of the round is committed
and stops when a generated answer carries the new version. Meanwhile the resident memory of this process (the
server), its decode worker processes and the trainer is sampled: `peak_rss_total_mb` is the peak of their sum.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def run(args) -> dict:
    from bench.common import MemorySampler, report
    from bench.pairs import fill_store
    from playground.core import Playground
    from playground.models import models_dir, resolve_preset
    from playground.processes import wait_for
    from playground.settings import ModelSettings, RoundSettings, Sampling

    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    preset = resolve_preset(args.preset)
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "models").symlink_to(models_dir(data_dir).resolve())
        settings = RoundSettings(min_pairs=args.pairs, epochs=args.epochs, train_threads=args.threads)
        playground = Playground(ModelSettings(preset=preset.name, data_dir=work), settings)
        playground.load_models()
        playground.start_trainer()
        playground.follow_versions(interval=0.5)
        try:
            fill_store(playground.store, args.pairs - 1, session="earlier")
            # The trainer is up and has seen the pairs, one short of a round.
            assert wait_for(lambda: (playground.store.trainer_state() or {}).get("pending") == args.pairs - 1, 300)
            assert not playground.store.versions()
            with MemorySampler() as memory:
                start = time.perf_counter()
                fill_store(playground.store, 1, session="the-last-vote")
                committed = time.perf_counter()
                ok = wait_for(lambda: playground.engine.adapter_version >= 1, timeout=1800, interval=0.2)
                swapped = time.perf_counter()
            answer = playground.engine.generate(
                "Why is the sky blue?", Sampling(temperature=0, max_new_tokens=1), arms=("pref",)
            )["pref"]
            served = time.perf_counter()
            assert ok and answer.adapter_version >= 1
            (rnd,) = playground.store.rounds()
        finally:
            playground.close()
    peak = defaultdict(float, memory.peak)
    figures = {
        "vote_to_serving_s": round(swapped - start, 1),
        "vote_to_new_version_serving_s": round(swapped - start, 1),
        "vote_to_first_answer_of_new_version_s": round(served - start, 1),
        "round_s": round(rnd["finished_at"] - rnd["started_at"], 1),
        "vote_commit_ms": round((committed - start) * 1000, 1),
        "peak_rss_total_mb": round(peak["total"]),
        "server_peak_rss_mb": round(peak["server"]),
        "decode_workers_peak_rss_mb": round(peak["decode_workers"]),
        "trainer_peak_rss_mb": round(peak["trainer"]),
    }
    return report("loop", settings.as_dict() | {"preset": preset.name}, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    from playground.settings import RoundSettings

    defaults = RoundSettings()  # as the app runs a round
    parser.add_argument(
        "--pairs", type=int, default=defaults.min_pairs, help="pairs of the round (default: the smallest round)"
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--threads", type=int, default=defaults.train_threads, help="torch threads of the trainer")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
