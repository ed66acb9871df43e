"""The ablation of a data set's recorded feedback (the Stages view's button, `python -m playground ablate`): in a
process of its own, every objective from the SFT model on a copy of the store, whatever rounds already trained; the
live data set gets the figures and the progress, nothing else."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import add_short_vs_long_votes, tiny_round

from playground.core import Playground
from playground.processes import wait_for
from playground.settings import ModelSettings
from playground.training import run_round


@pytest.mark.slow
def test_the_ablation_runs_in_its_own_process_from_the_sft_model_and_leaves_the_data_set_alone(tiny_models, tmp_path):
    models = ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path))
    settings = replace(tiny_round(rl_steps=2, rl_completion_tokens=8, eval_tokens=0), reward_model=False)
    playground = Playground(models, settings)
    try:
        store = playground.store
        assert playground.start_ablation("shorter").startswith("⚠ No feedback recorded yet")
        add_short_vs_long_votes(store, 6)
        assert run_round(store, playground.data_set.adapters_dir, str(tiny_models["sft"]), settings) == 1
        before = (store.serving_version(), [p["round_id"] for p in store.pairs()], store.counts())

        assert playground.start_ablation("shorter").startswith("✓ The ablation started")
        assert playground.start_ablation("shorter").startswith("An ablation is already running")
        assert wait_for(lambda: playground._ablation.poll() is not None, timeout=600), "the ablation did not end"
        assert playground._ablation.returncode == 0, (playground.data_set.root / "ablation.log").read_text()[-3000:]

        result = store.latest_ablation()
        assert result["mode"] == "recorded feedback" and result["oracle"] == "shorter"
        ablation = result["ablation"]
        # Every pair counts, though a round already trained on them: each objective starts from the SFT model.
        for name in ("dpo", "rm+rl"):
            assert ablation[name]["learned_from"]["pairs"] == 6 and ablation[name]["kl"] > 0, name
        assert ablation["sft"] == {"skipped": "no demonstrations recorded"}
        assert store.ablation_progress() is None, "no progress left once it is done"
        assert (store.serving_version(), [p["round_id"] for p in store.pairs()], store.counts()) == before
    finally:
        playground.close()
