"""How well a reward model trained on the first N votes predicts the votes after them (prequential agreement, with
a fixed test block so the sizes compare).

    python -m playground bench agreement [--oracle shorter|plain] [--votes 48] [--sizes 8,16,32] [--test 16] [--json]

The votes: `--votes` duels of the SFT model (two samples of the same prompt, sampling 0.8 / 0.95, 128 tokens, the
serving runtime), judged by the simulated voter's oracle, recorded in a store of their own (a tie makes no pair).
Then for each size N: a reward model trained as a round trains it (trl's RewardTrainer, the app's settings, from the
SFT model) on the first N pairs, and its agreement on the last `--test` pairs (never among its training pairs): the
share where it scores the oracle's choice higher, with its binomial standard error. Baseline: a coin (0.5).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import tempfile
import time
from pathlib import Path


def record_pairs(playground, oracle, prompts: list[dict], votes: int, seed: int) -> list[dict]:
    from playground.settings import Sampling

    rng = random.Random(seed)
    for i in range(votes):
        row = prompts[i % len(prompts)]
        sampling = Sampling(0.8, 0.95, 128, rng.randrange(2**31))
        *_, (answers, recorded) = playground.duel(row["prompt"], sampling, "bench", row.get("category"))
        outcome = oracle.compare(answers["a"].text, answers["b"].text)
        playground.store.vote_pairwise(
            "bench", recorded.comparison_id, recorded.answer_ids["a"], recorded.answer_ids["b"], outcome
        )
    return playground.store.pairs()


def run(args) -> dict:
    from bench.common import report
    from playground import reward_models
    from playground.core import Playground
    from playground.models import model_folder
    from playground.oracles import Oracle
    from playground.prompting import load_prompts
    from playground.settings import ModelSettings, RoundSettings
    from playground.simulate import workspace
    from playground.training.examples import trl_rows
    from playground.training.reward_model import conversations_of, train_reward_model

    oracle = Oracle.parse(args.oracle)
    sizes = [int(n) for n in args.sizes.split(",")]
    settings = RoundSettings(train_threads=2, idle_train_threads=2)
    with tempfile.TemporaryDirectory() as work:
        # The votes in a workspace of their own (as simulate's), the converted models shared.
        real = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
        models = ModelSettings(data_dir=str(workspace(real)), persist="off", hub_dataset=None)
        playground = Playground(models, settings)
        playground.load_models()
        started = time.perf_counter()
        pairs = record_pairs(playground, oracle, load_prompts(args.prompts), args.votes, args.seed)
        voting_s = time.perf_counter() - started
        tokenizer = playground.engine.sft.tokenizer
        sft_dir = model_folder(playground.preset.sft, playground.data_dir, False)
        playground.close()
        rows = trl_rows("pairs", pairs, tokenizer, settings.max_length)
        test = rows[-args.test :]
        figures = {"pairs": len(rows), "test_pairs": len(test), "voting_s": round(voting_s, 1), "by_size": {}}
        for size in sizes:
            # Ties make no pair: the largest size takes what is left before the test block, and says how many.
            n = min(size, len(rows) - len(test))
            if n < 2:
                figures["by_size"][str(size)] = {"skipped": f"only {len(rows)} pairs"}
                continue
            with contextlib.redirect_stdout(sys.stderr):  # trl prints its logs
                model, rm_tokenizer, trained = train_reward_model(
                    rows[:n], sft_dir, settings, Path(work) / f"rm-{n}", None, []
                )
            chosen, rejected = conversations_of(test)
            scores = reward_models.score(model, rm_tokenizer, chosen + rejected)
            agreed = [c > r for c, r in zip(scores[: len(test)], scores[len(test) :])]
            share = sum(agreed) / len(agreed)
            figures["by_size"][str(size)] = {
                "trained_on": n,
                "agreement": round(share, 3),
                "agreement_se": round(math.sqrt(share * (1 - share) / len(agreed)), 3),
                "accuracy_train": trained["accuracy_train"],
                "train_s": round(trained["seconds"], 1),
            }
            del model
    return report("agreement", {"oracle": oracle.spec, "votes": args.votes, "seed": args.seed}, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oracle", default="shorter")
    parser.add_argument("--votes", type=int, default=48)
    parser.add_argument("--sizes", default="8,16,32")
    parser.add_argument("--test", type=int, default=16, help="the last pairs, the held-out test block")
    parser.add_argument("--prompts", default="bench/prompts/issue29-train.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
