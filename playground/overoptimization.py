"""Reward over-optimization, shown: RL against a reward model for longer than a round does, measuring at checkpoints
what the surrogate says and what the truth says.

From the SFT model (a fresh adapter), trl's GRPOTrainer optimizes a version's reward model, as an `rlhf` round does,
for `steps` steps. Every `every` steps (and before the first), on held-out prompts (one sampled answer each,
temperature 1, the same seeds at every checkpoint):
- reward: the reward model's mean score of the policy's answers (what RL climbs);
- win_rate: the judge's verdict on the policy's answer against the SFT model's answer to the same prompt and seed
  (ties ½): the truth, which the reward model only stands in for (under `simulate`, the oracle);
- kl: the policy's KL to the SFT model on its own answers, nats per answer (drift.kl_estimate).
Goodhart: while the surrogate generalizes, reward and win rate rise together; pushed far from the SFT model, reward
keeps rising while the win rate stalls or falls. The KL penalty (`--rl-beta`) is what limits the distance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import drift, reward_models, verdicts
from .models import load_policy
from .settings import RoundSettings
from .training.rl import prompt_rows, reward_function
from .training.stages import Stage, lora_config

log = logging.getLogger(__name__)


def checkpoint(model, tokenizer, plan: drift.EvalPlan, reward, judge, sft_texts: list[str], step: int) -> dict:
    """One point of the curve (model: the PeftModel being trained)."""
    was_training = model.training
    model.eval()
    try:
        samples = drift.sample_and_score(model, tokenizer, plan, adapter=True)
    finally:
        model.train(was_training)
    texts = [s["text"] for s in samples]
    scores = reward_models.score(
        reward[0],
        reward[1],
        [
            ([{"role": "user", "content": p}], s["text"], s["tokens"] < plan.max_new_tokens)
            for p, s in zip(plan.prompts, samples)
        ],
    )
    outcomes = [judge(text, sft) for text, sft in zip(texts, sft_texts)]
    summary = verdicts.summarize(outcomes, list(range(len(outcomes))))
    return {
        "step": step,
        "kl": sum(s["kl"] for s in samples) / len(samples),
        "reward": sum(scores) / len(scores),
        "win_rate": summary["win_rate"],
        "win_rate_se": summary["win_rate_se"],
        "ties": summary["ties"],
        "mean_tokens": sum(s["tokens"] for s in samples) / len(samples),
    }


def run(
    sft_dir: str,
    reward_model_dir: str | Path,
    pair_rows: list[dict],
    settings: RoundSettings,
    judge: Callable[[str, str], str],
    heldout: list[str],
    *,
    steps: int,
    every: int,
    max_new_tokens: int,
    work: Path,
    seed: int = 10_000,
) -> list[dict]:
    """The curve: [{"step", "kl", "reward", "win_rate", ...}] at step 0 and every `every` steps up to `steps`.
    judge(policy answer, SFT answer) → "a" (policy better), "b" or "tie"; `pair_rows`: trl pairs whose prompts RL
    trains on (with unvoted prompts from `--rl-prompts`, the held-out ones left out)."""
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback, set_seed

    torch.set_num_threads(settings.idle_train_threads)
    base, reward_tokenizer = reward_models.load_base(sft_dir)
    reward = (reward_models.attach(base, reward_model_dir), reward_tokenizer)
    model, tokenizer = load_policy(sft_dir)
    set_seed(settings.train_seed)
    peft_model = get_peft_model(model, lora_config(settings))
    plan = drift.EvalPlan(tuple(heldout), max_new_tokens, seed)
    with peft_model.disable_adapter():
        sft_texts = [s["text"] for s in drift.sample_and_score(peft_model.eval(), tokenizer, plan, adapter=False)]
    curve = [checkpoint(peft_model, tokenizer, plan, reward, judge, sft_texts, 0)]
    started = time.perf_counter()

    class Checkpoints(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == steps:
                curve.append(checkpoint(peft_model, tokenizer, plan, reward, judge, sft_texts, state.global_step))
                log.info("Over-optimization, step %d: %s", state.global_step, curve[-1])

    long_run = replace(settings, rl_steps=steps)
    stage = Stage("grpo", prompt_rows(pair_rows, long_run, exclude=set(heldout)), reward=reward_function(*reward))
    stage.train(peft_model, tokenizer, long_run, work, [Checkpoints()])
    log.info("Over-optimization run: %d steps in %.0f s.", steps, time.perf_counter() - started)
    return curve


def after_simulation(playground, oracle, heldout: list[dict], sampling) -> dict:
    """After an `rlhf` simulation: RL against the last version's reward model for longer than a round (4 rounds' worth
    of steps), from the SFT model, with a checkpoint every `--checkpoint-steps` steps (overoptimization.py)."""
    from .models import model_folder
    from .training.examples import trl_rows

    settings = playground.round_settings
    version = next((v for v in reversed(playground.store.versions()) if reward_models.exists(v["path"])), None)
    if version is None:
        return {"skipped": "no version with a reward model"}
    sft_dir = model_folder(playground.preset.sft, playground.data_dir, playground.models.trust_remote_code)
    pairs = trl_rows("pairs", playground.store.pairs(), playground.engine.sft.tokenizer, settings.max_length)
    steps = max(4 * settings.rl_steps, 4 * settings.checkpoint_steps)
    started = time.perf_counter()
    curve = run(
        sft_dir,
        reward_models.folder_of(version["path"]),
        pairs,
        settings,
        lambda policy, sft: oracle.compare(policy, sft),
        [p["prompt"] for p in heldout],
        steps=steps,
        every=settings.checkpoint_steps,
        max_new_tokens=sampling.max_new_tokens,
        work=playground.data_dir / "overoptimization",
    )
    return {
        "reward_model_version": version["version"],
        "steps": steps,
        "rl_beta": settings.rl_beta,
        "oracle": oracle.spec,
        "heldout_prompts": len(heldout),
        "curve": curve,
        "seconds": round(time.perf_counter() - started, 1),
    }
