"""The whole loop on one device, end to end: chat (torch runtime), a round, the hot swap, explain and drift.

It runs on `PLAYGROUND_TEST_DEVICE` (default `cpu`): on a GPU machine, `PLAYGROUND_TEST_DEVICE=cuda python -m
pytest -q tests/test_device.py` puts the serving models on the GPU, and the trainer and drift use the GPU there as
they do in the app (trl's default device). Tiny models made from a config, so it travels to any machine.
"""

from __future__ import annotations

import math
import os

import pytest
from helpers import add_short_vs_long_votes, tiny_round

from playground.core import Playground
from playground.drift import EvalPlan, evaluate_stored_version
from playground.settings import ModelSettings, Sampling
from playground.training import run_round

DEVICE = os.environ.get("PLAYGROUND_TEST_DEVICE", "cpu")
ROUND = tiny_round(eval_tokens=0)


@pytest.mark.slow
def test_chat_a_round_the_hot_swap_explain_and_drift_on_the_device(tiny_models, tmp_path):
    settings = ModelSettings(
        base=str(tiny_models["base"]),
        sft=str(tiny_models["sft"]),
        data_dir=str(tmp_path),
        device=DEVICE,
        runtime="torch",
        persist="off",
    )
    playground = Playground(settings, ROUND)
    try:
        engine = playground.load_models()
        assert engine.sft.model.device.type == DEVICE and engine.base.model.device.type == DEVICE
        greedy = Sampling(temperature=0, max_new_tokens=8, seed=0)
        before = engine.generate("Tell me about topic 3.", greedy)
        assert all(a.done and a.new_tokens > 0 for a in before.values())

        add_short_vs_long_votes(playground.store, 8)
        version = run_round(playground.store, playground.data_set.adapters_dir, str(playground.preset.sft), ROUND)
        assert version == 1
        assert playground.sync_adapter() == 1  # the hot swap
        after = engine.generate("Tell me about topic 3.", greedy)
        assert after["pref"].adapter_version == 1 and after["pref"].text != before["pref"].text
        assert after["sft"].text == before["sft"].text  # the SFT arm never sees the adapter

        recorded = playground.record("Tell me about topic 3.", after, "s1")
        why = playground.explain(recorded.comparison_id, "pref")
        assert why.tokens and math.isfinite(why.total_reward) and why.total_reward != 0

        plan = EvalPlan(("Say something.", "Tell me a fact."), 8, 0)
        metrics = evaluate_stored_version(playground.store, 1, str(playground.preset.sft), plan)
        assert "error" not in metrics, metrics
        assert metrics["kl_to_sft"] is not None and metrics["mean_tokens"] > 0
    finally:
        playground.close()
