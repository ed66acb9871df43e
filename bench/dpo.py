"""One DPO round on `--pairs` fixed pairs (bench/pairs.py), run exactly as the app's trainer process runs it.

    python -m bench.dpo [--json] [--epochs 1]

Figures: wall time of the round (model load, reference log-probs, training, saving), seconds per optimizer step,
seconds per pair, and the trainer process's peak RSS (the round runs in a child process, as in the app); the
drift evaluation the trainer runs after publishing the version, and its share of the round's time to publish.

Baseline, in the same run: a plain trl `DPOTrainer` on the same pairs and the same LoRA with trl's documented
defaults (batch 8, max_length 1024, gradient checkpointing on, reference log-probs recomputed every step),
adjusted only to run on the CPU: `use_cpu=True` and `bf16=False` (bf16 autocast on a CPU without native bf16 is an
emulation, far slower: docs/performance.md; keeping it would flatter the comparison). Both train one epoch; the ratio is
seconds per pair, baseline / app.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plain_trl_round(sft_dir: str, n_pairs: int, settings) -> float:
    """Seconds from building the trainer to the end of one epoch of plain trl defaults (CPU-adjusted): the same
    span as the app's `fit_seconds` (tokenizing, reference log-probs, training)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from bench.pairs import fixed_pairs

    torch.set_num_threads(settings.train_threads)
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in fixed_pairs(n_pairs)
    ]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(sft_dir), AutoTokenizer.from_pretrained(sft_dir)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(
                output_dir=out,
                use_cpu=True,
                bf16=False,
                num_train_epochs=1,
                report_to="none",
                save_strategy="no",
                disable_tqdm=True,
            ),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=settings.lora_r,
                lora_alpha=settings.lora_alpha,
                target_modules=list(settings.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        with contextlib.redirect_stdout(sys.stderr):  # trl prints its logs; stdout carries the JSON
            trainer.train()
        return time.perf_counter() - start


def run(args) -> dict:
    from bench.common import report
    from bench.pairs import fill_store
    from playground.data_sets import DataSet
    from playground.models import model_folder, resolve_preset
    from playground.settings import ModelSettings, RoundSettings

    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    preset = resolve_preset(args.preset)
    sft_dir = model_folder(preset.sft, data_dir, False)  # converts once if needed, before timing
    settings = RoundSettings(
        epochs=args.epochs,
        train_threads=args.threads,
        batch_size=args.batch_size,
        grad_accumulation=args.grad_accumulation,
    )
    with tempfile.TemporaryDirectory() as work:
        store = DataSet.for_models(work, sft_dir, sft_dir).open_store()
        fill_store(store, args.pairs)
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "playground",
                "-q",
                "train",
                "--once",
                "--data-dir",
                work,
                "--sft",
                sft_dir,
                "--base",
                sft_dir,
                "--epochs",
                str(args.epochs),
                "--train-threads",
                str(args.threads),
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
                "--grad-accumulation",
                str(args.grad_accumulation),
            ],
            cwd=ROOT,
            check=True,
            stdout=sys.stderr,
        )
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        (rnd,) = store.rounds()
        steps = store.round_steps(rnd["id"])
        metrics = store.version(rnd["version"])["metrics"]
        train_s, fit_s = metrics["seconds"], metrics["fit_seconds"]
        to_publish = rnd["finished_at"] - rnd["started_at"]
        drift = next((e["metrics"] for e in store.version_evals() if e["version"] == rnd["version"]), {})
    baseline_s = plain_trl_round(sft_dir, args.pairs, settings) if not args.no_baseline else None
    figures = {
        "round_wall_s": round(wall, 1),
        "train_s": round(train_s, 1),
        "fit_s": round(fit_s, 1),
        "steps": len(steps),
        "seconds_per_step": round(train_s / len(steps), 2),
        "seconds_per_pair": round(wall / (args.pairs * args.epochs), 2),
        "trainer_peak_rss_mb": round(peak_mb),
        "final_loss": round(steps[-1]["loss"], 4),
        "final_reward_accuracy": steps[-1]["reward_accuracy"],
        # The drift evaluation runs after the version is published (drift.py): it delays the next round, never this
        # version; its share is of the round's own time from its start to publishing.
        "round_start_to_publish_s": round(to_publish, 1),
        "drift_eval_s": round(drift["seconds"], 1) if "seconds" in drift else None,
        "drift_eval_share_of_round": round(drift["seconds"] / to_publish, 3) if "seconds" in drift else None,
        "drift": {
            k: round(drift[k], 3)
            for k in ("mean_tokens", "hit_limit", "distinct_2", "kl_to_sft", "sft_perplexity")
            if drift.get(k) is not None
        },
    }
    if baseline_s is not None:
        app_per_pair = fit_s / (args.pairs * args.epochs)
        figures["app_fit_seconds_per_pair"] = round(app_per_pair, 2)
        figures["baseline_plain_trl_seconds_per_pair"] = round(baseline_s / args.pairs, 2)
        figures["speedup_per_pair_vs_plain_trl"] = round(baseline_s / args.pairs / app_per_pair, 2)
    settings_out = settings.as_dict() | {"preset": preset.name, "pairs": args.pairs, "device": args.device}
    return report("dpo", settings_out, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--pairs", type=int, default=16)
    from playground.settings import RoundSettings

    defaults = RoundSettings()
    parser.add_argument(
        "--epochs", type=int, default=1, help=f"the app runs {defaults.epochs}; 1 keeps the baseline comparison short"
    )
    parser.add_argument("--threads", type=int, default=2, help="the bench has the machine to itself")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--grad-accumulation", type=int, default=defaults.grad_accumulation)
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain trl baseline")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
