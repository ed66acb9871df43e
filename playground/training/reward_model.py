"""A round's reward model: trl's `RewardTrainer` on the round's pairs (the same new and replayed pairs its DPO stage
trains on), a LoRA on the SFT model with a scalar head, warm-started from the previous version's reward model.

The loss is trl's Bradley-Terry loss, −log σ(r(chosen) − r(rejected)), with trl's centring term (a small pull of the
scores toward 0, so the numbers the page shows stay readable from round to round). It is the surrogate of people's
judgment the `rlhf` route optimizes, and what the page shows under each answer.

`accuracy_train`: the share of its own training pairs it orders as the person did (what it fits); the honest figure
is `agreement`, measured on votes it never trained on (store/rewards.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import reward_models
from ..settings import RoundSettings
from .stages import _common, lora_config

SCORE_HEAD = ["score"]  # the scalar head: trained in full and saved with the adapter (PEFT modules_to_save)


def reward_lora_config(settings: RoundSettings):
    return lora_config(settings, task_type="SEQ_CLS", modules_to_save=list(SCORE_HEAD))


def reward_config(settings: RoundSettings, output_dir: Path):
    from trl import RewardConfig

    common = _common(settings, output_dir)
    # trl drops a pair longer than max_length instead of cutting it: every pair is kept (the conversation was
    # already fitted to the training length, oldest turns first, and answers are bounded by max_new_tokens).
    common["max_length"] = None
    return RewardConfig(
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accumulation,
        learning_rate=settings.reward_learning_rate,
        center_rewards_coefficient=0.01,
        disable_dropout=True,
        **common,
    )


def conversations_of(rows: list[dict]) -> tuple[list, list]:
    """(chosen, rejected) conversations of trl pair rows, as reward_models.score takes them (a cut answer unfinished)."""
    chosen = [(row["prompt"], row["chosen"][0]["content"], not row.get("chosen_cut")) for row in rows]
    rejected = [(row["prompt"], row["rejected"][0]["content"], not row.get("rejected_cut")) for row in rows]
    return chosen, rejected


def train_reward_model(
    rows: list[dict], sft_dir: str, settings: RoundSettings, work: Path, warm_from: Path | None, callbacks: list
):
    """Train on trl pair rows; returns (the PeftModel, its tokenizer, figures). `warm_from`: the previous reward
    model's folder to continue from (None: a fresh LoRA and head)."""
    import torch
    from datasets import Dataset
    from peft import PeftModel, get_peft_model
    from transformers import set_seed
    from trl import RewardTrainer

    from .unfinished import trainer_class

    started = time.perf_counter()
    set_seed(settings.train_seed)  # the head's and the LoRA's initialisation
    model, tokenizer = reward_models.load_base(sft_dir)
    if warm_from is not None:
        peft_model = PeftModel.from_pretrained(model, str(warm_from), is_trainable=True)
    else:
        peft_model = get_peft_model(model, reward_lora_config(settings))
    dataset = Dataset.from_list(rows).shuffle(seed=settings.train_seed)
    trainer = trainer_class(RewardTrainer)(
        model=peft_model,
        args=reward_config(settings, work),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    output = trainer.train()
    peft_model.eval()
    chosen, rejected = conversations_of(rows)
    with torch.inference_mode():
        scores = reward_models.score(peft_model, tokenizer, chosen + rejected)
    wins = sum(c > r for c, r in zip(scores[: len(rows)], scores[len(rows) :]))
    figures = {
        "pairs": len(rows),
        "accuracy_train": wins / len(rows) if rows else None,
        "steps": output.global_step,
        "train_loss": output.training_loss,
        "seconds": time.perf_counter() - started,
        "warm_start": warm_from is not None,
    }
    return peft_model, tokenizer, figures


def save(peft_model, out: Path, figures: dict, sft_hub_id: str | None) -> None:
    """The reward model in PEFT's format with its figures, its base named by the SFT model's Hub id when it has one
    (so the folder loads elsewhere)."""
    peft_model.save_pretrained(out)
    if sft_hub_id:
        config_file = out / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = sft_hub_id
        config_file.write_text(json.dumps(config, indent=2))
    (out / reward_models.SUMMARY).write_text(json.dumps(figures, indent=2))


def warm_start_from(parent_path: str | None, settings: RoundSettings) -> Path | None:
    """The parent version's reward model, when it has one of the same LoRA shape."""
    if not reward_models.exists(parent_path):
        return None
    folder = reward_models.folder_of(parent_path)
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    targets = config.get("target_modules") or []
    targets = {targets} if isinstance(targets, str) else set(targets)
    if config.get("r") != settings.lora_r or targets != set(settings.target_modules):
        return None
    return folder
