"""Publishing: an adapter version that loads elsewhere (the SFT model's Hub id, a model card), and exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import add_short_vs_long_votes

from playground import publishing
from playground.models import hub_id
from playground.store import Store

ROOT = Path(__file__).resolve().parent.parent


def test_hub_ids_of_model_specs(tmp_path):
    assert hub_id("embedded:smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("embedded:gemma-3-270m") == "google/gemma-3-270m"
    assert hub_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_id(str(tmp_path)) is None and hub_id(str(tmp_path / "model.gguf")) is None


def a_version(store: Store, adapter: Path, pairs: int = 4) -> int:
    add_short_vs_long_votes(store, pairs)
    run = store.start_round(
        0,
        [p["id"] for p in store.pending_pairs()],
        {"beta": 0.1, "learning_rate": 2e-4, "lora_r": 8, "new_pairs": pairs, "replayed_pairs": 0},
        pid=None,
    )
    store.log_step(run, 1, {"loss": 0.5})
    return store.finish_round(
        run, adapter, {"final_loss": 0.5, "final_reward_margin": 0.8, "final_reward_accuracy": 1.0}
    )


def test_an_adapter_folder_names_the_hub_model_and_carries_a_model_card(tiny_adapters, tmp_path):
    from huggingface_hub import ModelCard

    store = Store.open(tmp_path / "set")
    version = a_version(store, tiny_adapters[1])
    out = publishing.adapter_folder(
        store,
        version,
        tmp_path / "out",
        sft_spec="embedded:smollm2-135m-instruct",
        sft_hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        dataset_repo="me/votes",
        win_rate={"games": 4, "wins": 3.0, "rate": 0.75},
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (out / "adapter_model.safetensors").read_bytes() == (
        tiny_adapters[1] / "adapter_model.safetensors"
    ).read_bytes()
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.library_name == "peft"
    assert card.data.datasets == ["me/votes"] and "dpo" in card.data.tags
    for fact in (
        "v1",
        "DPO on pairs (4)",
        "beta=0.1",
        "lora_r=8",
        "0.500",
        "won 3 of 4 games",
        "de-quantized",
        "AutoPeftModelForCausalLM",
    ):
        assert fact in card.text, fact
    original = json.loads((tiny_adapters[1] / "adapter_config.json").read_text())
    assert original["base_model_name_or_path"] != "HuggingFaceTB/SmolLM2-135M-Instruct", "the version stays as it was"


def test_a_local_model_without_a_hub_id_says_so(tiny_adapters, tmp_path):
    store = Store.open(tmp_path / "set")
    version = a_version(store, tiny_adapters[1])
    out = publishing.adapter_folder(store, version, tmp_path / "out", sft_spec="/models/mine", sft_hub_id=None)
    assert "no Hub id" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="Version 0 is the SFT model itself"):
        publishing.adapter_folder(store, 0, tmp_path / "zero", sft_spec="x", sft_hub_id=None)


def test_export_cli_writes_an_adapter_with_its_card(tiny_models, tiny_adapters, tmp_path):
    from playground.data_sets import DataSet

    data_set = DataSet.for_models(tmp_path, str(tiny_models["base"]), str(tiny_models["sft"]))
    a_version(data_set.open_store(), tiny_adapters[2])
    out = tmp_path / "published"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "export",
            "--what",
            "adapter",
            "--out",
            str(out),
            "--base",
            str(tiny_models["base"]),
            "--sft",
            str(tiny_models["sft"]),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "Wrote adapter v1" in result.stdout, result.stderr
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["sft"]), out)
    assert "default" in model.peft_config, "the published folder loads with PEFT"
