"""Feedback → one round with trl → a new adapter version; and the trainer process that runs rounds as feedback
arrives.

- examples.py: which feedback a round takes (the kinds its weights turn on, oldest first, capped per voter, plus a
  replay of earlier examples), each example fitted to the training length in its trl format;
- stages.py: the stages (SFT on demonstrations, DPO with RPO's NLL term on pairs, KTO on ratings, GRPO on the
  rlhf route), one trl trainer each, their references (the SFT model) and weights;
- unfinished.py: answers cut at the token limit train with their turn left open (DPO, KTO, the reward model);
- reward_model.py, rl.py: the round's reward model (trl's RewardTrainer) and RL against it (GRPO's reward);
- runner.py: one round: the stages in order on one LoRA adapter, warm-started from the serving version, published
  atomically as the next version, then measured (drift.py);
- watch.py: the trainer process's loop.
"""

from ..models import load_policy
from .examples import (
    OBJECTIVE_TITLES,
    OBJECTIVES,
    STAGE_TITLES,
    STAGES,
    Selection,
    eligible_counts,
    fit_to_length,
    min_pairs_in_force,
    request_honoured,
    round_due,
    select_feedback,
    stages_of,
)
from .runner import run_round
from .stages import dpo_config, kto_class_weights
from .watch import exit_with_parent, watch

__all__ = [
    "OBJECTIVE_TITLES",
    "OBJECTIVES",
    "STAGE_TITLES",
    "STAGES",
    "Selection",
    "dpo_config",
    "eligible_counts",
    "exit_with_parent",
    "fit_to_length",
    "kto_class_weights",
    "load_policy",
    "min_pairs_in_force",
    "request_honoured",
    "round_due",
    "run_round",
    "select_feedback",
    "stages_of",
    "watch",
]
