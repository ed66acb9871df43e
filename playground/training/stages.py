"""The stages of a round: one trl trainer each, all on the round's one LoRA adapter, each with the loss trl made for
its kind of feedback (nothing hand-written):

- sft: `SFTTrainer` on demonstrations, prompt-completion rows: the negative log-likelihood of the person's answer
  given its conversation (the prompt's tokens are not trained);
- dpo: `DPOTrainer` on pairs: DPO's sigmoid loss with β;
- kto: `KTOTrainer` on ratings: 👍 answers pushed up and 👎 down, each against a KL baseline trl estimates from the
  other examples of its batch (so a batch holds at least 2: `KTO_MIN_BATCH`);
- grpo (the `rlhf` route, instead of dpo): `GRPOTrainer` on prompts, rewarded by the round's reward model (rl.py).

References. DPO and KTO measure against a reference model, which `--dpo-reference` chooses (`reference_for`). trl
computes the reference log-probs once, when its trainer is made, from a frozen copy ("ref") of the adapter as it is
then. `sft` (the default): the adapter's weights are set aside meanwhile, so the reference is the SFT model itself in
every round; every version stays anchored to the same fluent SFT model, and the implicit reward
β·(log π_θ − log π_SFT) that explain.py shows is what both preference stages push on. `previous`: the copy is the
adapter the round warm-started from, the version it builds on (iterative DPO): each round is pulled back to its
parent only, so rounds can add up to more movement (and more drift); relative to the SFT model the implicit reward is
then the sum of the rounds' own. A round that starts from a fresh adapter has the SFT model as reference either way.
The SFT stage has no reference: it only makes the demonstrations likely.

Weights. Each stage has its own AdamW, and Adam divides each gradient by its running scale, so a constant factor on
a stage's loss alone would change almost nothing. A stage's weight (`--sft-weight`, `--rating-weight`; DPO's is 1)
scales its learning rate instead: its steps, as a loss weight scales those of plain gradient descent.

CPU-safe settings throughout: fp32 (no bf16 autocast), no gradient checkpointing, no reporting integrations.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..settings import RoundSettings

KTO_MIN_BATCH = 2


def lora_config(settings: RoundSettings, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None):
    """The round's LoRA (a reward model's: task_type SEQ_CLS, its scalar head in modules_to_save)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        modules_to_save=modules_to_save,
        task_type=task_type,
    )


def _common(settings: RoundSettings, output_dir: Path) -> dict:
    """What every stage's trl config shares: trl's GPU-minded defaults turned into what a CPU runs well."""
    import torch

    return dict(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        lr_scheduler_type="constant",
        max_length=settings.max_length,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=settings.train_seed,
    )


def dpo_config(settings: RoundSettings, output_dir: Path):
    """trl's DPOConfig for a round's DPO stage, the reference log-probs computed once up front."""
    from trl import DPOConfig

    # RPO: DPO's sigmoid loss plus the chosen answer's negative log-likelihood, which keeps what people preferred
    # likely while the margin grows (so more steps per pair cost less fluency).
    losses = (
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, settings.rpo_weight]} if settings.rpo_weight else {}
    )
    return DPOConfig(
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accumulation,
        learning_rate=settings.learning_rate,
        beta=settings.beta,
        precompute_ref_log_probs=True,
        # The reference log-probs in batches of an optimizer step's size (trl: one pass's), which a CPU does faster.
        precompute_ref_batch_size=settings.batch_size * settings.grad_accumulation,
        **losses,
        **_common(settings, output_dir),
    )


def sft_config(settings: RoundSettings, output_dir: Path):
    """trl's SFTConfig for the demonstration stage: the loss on the answer's tokens only."""
    from trl import SFTConfig

    return SFTConfig(
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accumulation,
        learning_rate=settings.learning_rate * settings.sft_weight,
        completion_only_loss=True,
        **_common(settings, output_dir),
    )


def grpo_config(settings: RoundSettings, output_dir: Path):
    """trl's GRPOConfig for the rlhf route's RL stage (sizes: rl.py says why)."""
    from trl import GRPOConfig

    common = _common(settings, output_dir)
    del common["num_train_epochs"], common["max_length"]  # RL runs `rl_steps` steps; its lengths are its own
    return GRPOConfig(
        per_device_train_batch_size=settings.rl_generations,  # one prompt's group per step
        gradient_accumulation_steps=1,
        num_generations=settings.rl_generations,
        max_completion_length=settings.rl_completion_tokens,
        max_steps=settings.rl_steps,
        learning_rate=settings.rl_learning_rate,
        beta=settings.rl_beta,
        temperature=1.0,
        # A sample cut at `rl_completion_tokens` is scored as unfinished, its turn open, as the reward model learned
        # to read cut answers (rl.reward_function), not as if it had ended. It stays in the loss: masking cut samples
        # (trl's mask_truncated_completions) would leave RL little here: 60-88% of the SFT model's held-out answers
        # run to 128 tokens (so past 64: docs/performance.md, issue 37), and with it on, the tiny-model RL tests
        # learned nothing.
        mask_truncated_completions=False,
        **common,
    )


def kto_batches(settings: RoundSettings) -> tuple[int, int]:
    """(examples per pass, passes per step) of the rating stage: at least KTO_MIN_BATCH a pass, about the same
    examples per optimizer step as the other stages."""
    batch = max(KTO_MIN_BATCH, settings.batch_size)
    return batch, max(1, round(settings.batch_size * settings.grad_accumulation / batch))


def kto_class_weights(labels: list[bool]) -> tuple[float, float]:
    """(desirable, undesirable) weights that give 👍 and 👎 the same total weight, as KTO's paper advises for unequal
    counts (the larger class is weighted down); 1 and 1 when one class is missing."""
    up, down = sum(labels), len(labels) - sum(labels)
    if not up or not down:
        return 1.0, 1.0
    return (min(1.0, down / up), min(1.0, up / down))


def kto_config(settings: RoundSettings, output_dir: Path, labels: list[bool]):
    from trl import KTOConfig

    batch, accumulation = kto_batches(settings)
    desirable, undesirable = kto_class_weights(labels)
    return KTOConfig(
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        learning_rate=settings.learning_rate * settings.rating_weight,
        beta=settings.beta,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=batch * accumulation,
        desirable_weight=desirable,
        undesirable_weight=undesirable,
        **_common(settings, output_dir),
    )


@contextlib.contextmanager
def reference_for(peft_model, reference: str, keep_copy: bool = False):
    """While a preference trainer is made: the adapter as its reference should see it. `sft`: LoRA's B matrices at
    zero, so the adapter adds nothing and the frozen "ref" copy trl takes (and the log-probs it computes from it) are
    the SFT model's; the weights go back after. `previous`: the adapter as it is, the round's starting point. Either
    way the copy is deleted after (it would be saved with the adapter), unless `keep_copy`: RL reads it at every
    step, and Stage.train deletes it once the stage has trained."""
    import torch

    saved = (
        {
            name: param.detach().clone()
            for name, param in peft_model.named_parameters()
            if re.search(r"\.lora_(embedding_)?B\.default\b", name)
        }
        if reference == "sft"
        else {}
    )
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name in saved:
            params[name].zero_()
    try:
        yield
    finally:
        if "ref" in peft_model.peft_config and not keep_copy:
            peft_model.delete_adapter("ref")
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def stage_steps(name: str, examples: int, settings: RoundSettings) -> int:
    """Optimizer steps of a stage on `examples` examples (what trl's trainer will take)."""
    if name == "grpo":
        return settings.rl_steps
    batch, accumulation = kto_batches(settings) if name == "kto" else (settings.batch_size, settings.grad_accumulation)
    return settings.epochs * -(-examples // (batch * accumulation))


@dataclass
class Stage:
    """One stage of a round: its name (sft, dpo, kto, grpo) and its examples in trl's format (grpo: prompts);
    `reward`: grpo's reward function (rl.reward_function)."""

    name: str
    rows: list[dict]
    reward: object = None

    def trainer(self, peft_model, tokenizer, settings: RoundSettings, output_dir: Path, callbacks: list):
        """The trl trainer of this stage, made just before it trains (each trainer fits the model's forward pass to
        its own loss when it is made)."""
        from datasets import Dataset

        # KTO reads its batches in order (its KL term pairs each prompt with a neighbour's answer): shuffled here.
        dataset = Dataset.from_list(self.rows).shuffle(seed=settings.train_seed)
        given = dict(model=peft_model, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
        from .unfinished import trainer_class

        if self.name == "sft":
            from trl import SFTTrainer

            return SFTTrainer(args=sft_config(settings, output_dir), **given)
        if self.name == "grpo":
            from trl import GRPOTrainer

            # KL to the SFT model, whichever reference the DPO stages use: the reward model's over-optimization is
            # what the penalty holds back, measured from where people's judgments were made.
            with reference_for(peft_model, "sft", keep_copy=True):
                return GRPOTrainer(args=grpo_config(settings, output_dir), reward_funcs=self.reward, **given)
        with reference_for(peft_model, settings.dpo_reference):
            if self.name == "dpo":
                from trl import DPOTrainer

                return trainer_class(DPOTrainer)(args=dpo_config(settings, output_dir), **given)
            from trl import KTOTrainer

            return trainer_class(KTOTrainer)(
                args=kto_config(settings, output_dir, [row["label"] for row in self.rows]), **given
            )

    def train(self, peft_model, tokenizer, settings: RoundSettings, output_dir: Path, callbacks: list) -> dict:
        """Train this stage; its figures: steps, train loss, seconds (including making the trainer, which
        tokenizes and computes the reference log-probs)."""
        started = time.perf_counter()
        try:
            output = self.trainer(peft_model, tokenizer, settings, output_dir, callbacks).train()
        finally:
            if "ref" in peft_model.peft_config:  # RL's reference copy, kept while it trained
                peft_model.delete_adapter("ref")
                peft_model.set_adapter("default")
        return {
            "steps": output.global_step,
            "train_loss": output.training_loss,
            "seconds": time.perf_counter() - started,
        }
