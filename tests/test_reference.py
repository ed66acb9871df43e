"""What each round's preference stages measure against (`--dpo-reference`): the SFT model in every round, or the
version the round starts from; recorded with the round, and said by explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import add_short_vs_long_votes, tiny_round
from peft import get_peft_model

from playground.core import Playground
from playground.generation import Engine
from playground.models import load_model, load_policy
from playground.settings import ModelSettings, RoundSettings
from playground.training import run_round
from playground.training.stages import Stage, lora_config

PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"Question {i}?"}],
        "chosen": [{"role": "assistant", "content": "Yes."}],
        "rejected": [{"role": "assistant", "content": "No, not at all, never ever, not even once."}],
    }
    for i in range(4)
]


def completion_logprobs(model, batch) -> list[float]:
    """Σ log π(completion tokens) of each row of a trl DPO batch (chosen rows, then rejected rows)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    taken = torch.log_softmax(logits.float(), -1).gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    return (taken * batch["completion_mask"][:, 1:]).sum(-1).tolist()


@pytest.mark.parametrize("reference", ["sft", "previous"])
def test_the_reference_log_probs_are_the_sft_model_or_the_adapter_the_round_starts_from(
    tiny_models, tmp_path, reference
):
    settings = tiny_round(dpo_reference=reference)
    model, tokenizer = load_policy(str(tiny_models["sft"]))
    torch.manual_seed(0)
    peft_model = get_peft_model(model, lora_config(settings))
    with torch.no_grad():  # a parent that has learned something: its B matrices are not zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    start = {name: p.detach().clone() for name, p in peft_model.named_parameters() if "lora_" in name}

    trainer = Stage("dpo", PAIRS).trainer(peft_model, tokenizer, settings, tmp_path / "dpo", [])

    row = trainer.train_dataset[0]
    batch = trainer.data_collator([{k: v for k, v in row.items() if not k.startswith("ref_")}])
    peft_model.eval()
    with peft_model.disable_adapter():
        sft = completion_logprobs(peft_model, batch)
    parent = completion_logprobs(peft_model, batch)
    assert abs(sft[0] - parent[0]) > 1e-3, "the parent must differ from the SFT model for this test to say anything"
    expected = sft if reference == "sft" else parent
    assert [row["ref_chosen_logps"], row["ref_rejected_logps"]] == pytest.approx(expected, abs=1e-4)
    # The round trains from where it started, and trl's frozen copy is not left in the model (it would be saved).
    assert list(peft_model.peft_config) == ["default"]
    after = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    assert all(torch.equal(start[name], after[name]) for name in start)
    assert all(p.requires_grad for p in after.values())


def test_the_setting_reads_its_flag_and_environment_variable_and_refuses_others(monkeypatch):
    from playground import options
    from playground.errors import UserError

    parse = lambda *argv: options.settings_from(  # noqa: E731
        options.parser_with(RoundSettings).parse_args(list(argv)), RoundSettings
    )
    monkeypatch.delenv("PLAYGROUND_DPO_REFERENCE", raising=False)
    assert parse().dpo_reference == "sft"
    monkeypatch.setenv("PLAYGROUND_DPO_REFERENCE", "previous")
    assert parse().dpo_reference == "previous"
    assert parse("--dpo-reference", "sft").dpo_reference == "sft"
    with pytest.raises(UserError, match="dpo_reference must be one of sft, previous"):
        RoundSettings(dpo_reference="parent")


@pytest.mark.slow
def test_rounds_against_the_previous_version_record_it_and_explain_shows_both_rewards(tiny_models, tmp_path):
    settings = tiny_round(dpo_reference="previous")
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    models = ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path))
    playground = Playground(models, settings, engine=engine)
    try:
        store, adapters = playground.store, playground.data_set.adapters_dir
        add_short_vs_long_votes(store, 4)
        assert run_round(store, adapters, str(tiny_models["sft"]), settings) == 1
        add_short_vs_long_votes(store, 4, session="sim-2")
        assert run_round(store, adapters, str(tiny_models["sft"]), settings) == 2
        first, second = (store.version(v)["hyperparams"] for v in (1, 2))
        assert first["reference"] == second["reference"] == "previous"
        assert first["reference_version"] == 0, "the first round starts fresh: its reference is the SFT model"
        assert second["reference_version"] == 1
        meta = json.loads((Path(store.version(2)["path"]) / "playground.json").read_text())
        assert meta["hyperparams"]["reference_version"] == 1

        comparison = 1  # the first duel add_short_vs_long_votes recorded
        under = {v: playground.explain(comparison, "a", version=v) for v in (1, 2)}
        assert under[1].trained_reference == 0 and under[1].round_reward is None
        assert under[2].reference == "the SFT model" and under[2].trained_reference == 1
        # Relative to the SFT model, v2's reward is v1's plus what v2's own round added against v1.
        assert under[2].round_reward == pytest.approx(under[2].total_reward - under[1].total_reward, abs=1e-3)
        from playground.explain import summary

        assert "trained against v1 (`--dpo-reference previous`)" in summary(under[2])
    finally:
        playground.close()
