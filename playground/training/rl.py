"""The `rlhf` route's preference stage: RL against the round's reward model, with trl's `GRPOTrainer` (its loss, its
sampling, its KL term; nothing hand-written here but the reward function that asks the reward model).

The reward model is what generalizes: it learned from the pairs people voted on, and RL optimizes it on those
prompts and on prompts nobody voted on (`--rl-prompts`), so the human signal reaches new prompts. Optimized too
hard, the policy finds what the surrogate over-rewards; the KL penalty to the SFT model (`--rl-beta`) holds it back.

Sizes, for a round that runs in the background on 2 CPU cores (docs/performance.md has the measurement):
- `--rl-generations` answers per prompt (GRPO's group; trl's default 8 would double every step), one prompt per
  optimizer step: each step samples G answers, scores them, and moves toward those above the group's mean;
- `--rl-completion-tokens` tokens at most per answer (trl's default is 512);
- `--rl-steps` optimizer steps per round.
The reference is the SFT model: the adapter's weights are set aside while trl copies it (stages.reference_for), and
the copy is deleted after the stage (it would be saved with the adapter).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .. import reward_models
from ..settings import RoundSettings

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEFAULT_RL_PROMPTS = ASSETS / "prompts.jsonl"


def read_prompts(path: str | Path | None) -> list[str]:
    """The prompts of a JSONL file (`{"prompt": ...}` a line); default: the example prompts in assets/."""
    path = Path(path) if path else DEFAULT_RL_PROMPTS
    prompts = []
    for line in path.read_text().splitlines():
        if line.strip():
            prompt = json.loads(line).get("prompt")
            if isinstance(prompt, str) and prompt.strip():
                prompts.append(prompt.strip())
    return prompts


def prompt_rows(pair_rows: list[dict], settings: RoundSettings, exclude: set[str] = frozenset()) -> list[dict]:
    """The RL stage's prompts, in trl's conversational prompt format: every distinct conversation people voted on,
    then as many prompts nobody voted on (from `--rl-prompts`, drawn with the round's seed), those in `exclude`
    (held-out prompts under `simulate`) left out. Unvoted prompts are what RL carries the reward model to."""
    voted, seen = [], set()
    for row in pair_rows:
        key = json.dumps(row["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            voted.append({"prompt": row["prompt"]})
    asked = {row["prompt"][-1]["content"].strip() for row in voted}
    unvoted = [p for p in read_prompts(settings.rl_prompts) if p not in asked and p not in exclude]
    rng = random.Random(settings.train_seed + len(voted))
    drawn = rng.sample(unvoted, min(len(unvoted), max(len(voted), settings.rl_steps)))
    return voted + [{"prompt": [{"role": "user", "content": p}]} for p in drawn]


def reward_function(reward_model, tokenizer):
    """trl's reward-function interface over the round's reward model: (prompts, completions) → scores. A sample
    that ends in neither end-of-sequence nor padding was cut at `--rl-completion-tokens` (trl's own test): it is
    scored with its turn open, as the reward model learned to read a cut answer (not as if it had ended there)."""
    ends = {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}

    def reward_model_score(prompts, completions, completion_ids=None, **_) -> list[float]:
        ids = completion_ids or [None] * len(completions)
        return reward_models.score(
            reward_model,
            tokenizer,
            [
                (prompt, completion[0]["content"], not cut_sample(sample, ends))
                for prompt, completion, sample in zip(prompts, completions, ids)
            ],
        )

    return reward_model_score


def cut_sample(ids, ends: set[int]) -> bool:
    """Whether a sampled completion's token ids stop without an end token (trl's `is_truncated`)."""
    return bool(ids is not None and len(ids) and int(ids[-1]) not in ends)
