"""Feedback → one round with trl → a new adapter version; and the trainer process that runs rounds as feedback
arrives.

- examples.py: which feedback a round takes (the kinds its weights turn on, oldest first, capped per voter, plus a
  replay of earlier examples), each example fitted to the training length in its trl format;
- stages.py: the stages (SFT on demonstrations, DPO on pairs, KTO on ratings), one trl trainer each, their
  references (the SFT model) and weights;
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
