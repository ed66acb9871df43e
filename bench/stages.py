"""Rounds on every kind of feedback against DPO alone on the same pairs, and the two ways to combine SFT and DPO.

    python -m playground bench stages [--json] [--pairs 16] [--corrections 4] [--rated-turns 4]

The feedback, one store for every run: `--pairs` duel votes on fixed pairs (bench/pairs.py); a better answer on
`--corrections` of those turns (a demonstration each, and two more pairs: the person's answer over each model
answer); thumbs on both answers of `--rated-turns` turns (up the short one, down the long one). Every run trains
one round from the SFT model (no parent) with the app's round settings, in this process:

- dpo: DPO alone on the pairs (`--sft-weight 0 --rating-weight 0`): the baseline;
- all: every kind, the app's default: SFT on the demonstrations, then DPO on the pairs, then KTO on the ratings;
- staged: SFT on the demonstrations, then DPO (no ratings): the arrangement the app uses;
- combined: one DPO pass with trl's `loss_type=["sigmoid", "sft"]`, `loss_weights=[1, 1]`: the negative
  log-likelihood of every pair's chosen answer added to DPO's loss (the demonstrations enter only as the chosen
  side of their pairs, as in trl's RPO); the other arrangement on offer.

Figures: each run's seconds (from loading the model to the saved adapter), the ratio all / dpo, and
for dpo, staged and combined: the demonstrations' mean log-probability per token minus the SFT model's (what
instruction alignment should raise) and the share of pairs whose implicit reward margin is positive (what DPO should
raise), both on the round's own training data.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path


def feedback_store(folder: str, n_pairs: int, corrections: int, rated_turns: int):
    from bench.pairs import fill_store
    from playground.store import Store

    store = Store.open(folder)
    fill_store(store, n_pairs)
    for comparison in range(1, corrections + 1):
        chosen = store.comparison(comparison)["answers"][0]["text"]
        store.add_correction("bench", comparison, chosen.split(". ")[0] + ".")
    for comparison in range(corrections + 1, corrections + 1 + rated_turns):
        short, long = store.comparison(comparison)["answers"][:2]
        store.vote_thumb("bench", short["id"], True)
        store.vote_thumb("bench", long["id"], False)
    return store


def staged_round(store, sft_dir: str, settings, stages) -> tuple[float, str]:
    from playground.training import run_round

    start = time.perf_counter()
    version = run_round(store, Path(store.root) / "adapters", sft_dir, settings, force=True, stages=stages)
    return time.perf_counter() - start, store.version(version)["path"]


def combined_round(store, sft_dir: str, settings, out: Path) -> tuple[float, str]:
    """One DPO pass with trl's combined loss (sigmoid + the chosen answers' NLL) on every pair."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOTrainer

    from playground.models import load_policy
    from playground.training import dpo_config, fit_to_length
    from playground.training.stages import lora_config
    from playground.votes import to_trl

    start = time.perf_counter()
    model, tokenizer = load_policy(sft_dir)
    set_seed(settings.train_seed)
    rows = [fit_to_length(to_trl(p), tokenizer, settings.max_length) for p in store.pairs()]
    config = dataclasses.replace(
        dpo_config(settings, out / "trainer"), loss_type=["sigmoid", "sft"], loss_weights=[1.0, settings.sft_weight]
    )
    trainer = DPOTrainer(
        model=model,
        args=config,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        train_dataset=Dataset.from_list(rows).shuffle(seed=settings.train_seed),
    )
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return time.perf_counter() - start, str(out / "adapter")


def what_it_learned(store, sft_dir: str, adapter: str) -> dict:
    """The demonstrations' log-probability gain per token over the SFT model, and the share of pairs with a
    positive implicit reward margin, under the adapter."""
    import torch
    from peft import PeftModel

    from playground.explain import answer_tokens
    from playground.models import load_policy
    from playground.scoring import token_logprobs
    from playground.votes import demonstration_to_trl, to_trl

    model, tokenizer = load_policy(sft_dir)
    model = PeftModel.from_pretrained(model, adapter).eval()

    def logprobs(messages, answer) -> tuple[list[float], list[float]]:
        prompt_ids, answer_ids = answer_tokens(tokenizer, messages, answer)
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.inference_mode():
            tuned = token_logprobs(model(input_ids=ids).logits, ids, len(prompt_ids))
            with model.disable_adapter():
                sft = token_logprobs(model(input_ids=ids).logits, ids, len(prompt_ids))
        return tuned, sft

    gains, tokens = 0.0, 0
    for demo in map(demonstration_to_trl, store.demonstrations()):
        tuned, sft = logprobs(demo["prompt"], demo["completion"][0]["content"])
        gains, tokens = gains + sum(tuned) - sum(sft), tokens + len(tuned)
    positive = []
    for pair in map(to_trl, store.pairs()):
        margin = 0.0
        for side, sign in (("chosen", 1), ("rejected", -1)):
            tuned, sft = logprobs(pair["prompt"], pair[side][0]["content"])
            margin += sign * (sum(tuned) - sum(sft))
        positive.append(margin > 0)
    return {
        "demonstration_logprob_gain_per_token": round(gains / tokens, 4) if tokens else None,
        "pair_accuracy": round(sum(positive) / len(positive), 3),
    }


def run(args) -> dict:
    from bench.common import report
    from playground.models import model_folder, resolve_preset
    from playground.settings import ModelSettings, RoundSettings

    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    preset = resolve_preset(args.preset)
    sft_dir = model_folder(preset.sft, data_dir, False)  # converts once if needed, before timing
    settings = RoundSettings(train_threads=args.threads, eval_tokens=0, max_new_pairs=10**6)
    runs = {"dpo": ("dpo",), "all": ("sft", "dpo", "kto"), "staged": ("sft", "dpo"), "combined": None}
    figures = {}
    with tempfile.TemporaryDirectory() as work:
        for name, stages in runs.items():
            # Each run on its own copy of the same feedback, from the same start.
            store = feedback_store(str(Path(work) / name), args.pairs, args.corrections, args.rated_turns)
            with contextlib.redirect_stdout(sys.stderr):  # trl prints its logs; stdout carries the JSON
                if stages is None:
                    seconds, adapter = combined_round(store, sft_dir, settings, Path(work) / name)
                else:
                    seconds, adapter = staged_round(store, sft_dir, settings, stages)
            figures[f"{name}_round_s"] = round(seconds, 1)
            if name != "all":
                figures[name] = what_it_learned(store, sft_dir, adapter)
        totals = store.feedback_totals()
    figures["ratio_all_kinds_to_dpo_alone"] = round(figures["all_round_s"] / figures["dpo_round_s"], 2)
    figures["feedback"] = {kind: t["total"] for kind, t in totals.items()}
    settings_out = settings.as_dict() | {
        "preset": preset.name,
        "corrections": args.corrections,
        "rated_turns": args.rated_turns,
    }
    return report("stages", settings_out, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--pairs", type=int, default=16, help="duel votes, one pair each")
    parser.add_argument("--corrections", type=int, default=4, help="better answers, on that many of the turns")
    parser.add_argument("--rated-turns", type=int, default=4, help="turns whose two answers get thumbs")
    parser.add_argument("--threads", type=int, default=2, help="the bench has the machine to itself")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
