"""The server's reward model: one version's at a time, scoring answers in torch whatever runtime decodes them.

It reads the SFT weights the scorer (scoring.py) already holds, not a copy of its own (reward_models.shared_base), and
adds only the version's LoRA and scalar head; a model whose weights cannot be shared (int8) gets its own float copy.
Loading a version replaces the one before.
"""

from __future__ import annotations

import threading
from pathlib import Path

from . import reward_models
from .models import pad_with_eos
from .scoring import Scorer


class RewardScorer:
    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._lock = threading.Lock()
        self._loaded: tuple[int, str] | None = None  # (version, path) of the model in memory
        self._model = None

    def _fresh_base(self):
        """A sequence-classification shell on the SFT weights (a version's LoRA layers wrap its modules, so each
        version gets a fresh one: sharing the weights, that costs no copy)."""
        runtime = self.scorer._torch()
        with runtime.lock:
            base = reward_models.shared_base(runtime.loaded.model, runtime.loaded.tokenizer)
        if base is None:
            base, _ = reward_models.load_base(self.scorer.sft.source)
        return base

    def score(self, version: int, path: str | Path, conversations: list[tuple[list[dict], str]]) -> list[float]:
        """Scores of (messages, answer) by the reward model of `version`, whose folder is `path`."""
        with self._lock:
            if self._loaded != (version, str(path)):
                self._model = None
                self._model = reward_models.attach(self._fresh_base(), path)
                self._loaded = (version, str(path))
            return reward_models.score(self._model, pad_with_eos(self.scorer.sft.tokenizer), conversations)
