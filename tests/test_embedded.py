"""Integration: the embedded default models, really converted from their GGUF packages, through the CLI.

Slow-ish (the one-time conversion takes about a minute), so only a few tests use them; the data directory is
shared across this module so the conversion happens once per test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from playground import models

pytestmark = pytest.mark.slow  # every test here loads the embedded models or starts a process

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def embedded_data_dir(tmp_path_factory) -> Path:
    """A data directory holding the converted embedded models (converted once per test run, by whichever test
    asks first)."""
    data_dir = tmp_path_factory.mktemp("embedded-data")
    for spec in ("embedded:smollm2-135m-instruct", "embedded:gemma-3-270m"):
        models.model_folder(spec, data_dir, trust_remote_code=False)
    return data_dir


def run_cli(*args, data_dir: Path, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run(
        [sys.executable, "-m", "playground", *args, "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_embedded_models_convert_once_into_a_clean_cache(embedded_data_dir):
    for spec in ("embedded:smollm2-135m-instruct", "embedded:gemma-3-270m"):
        loaded = models.load_model(spec, embedded_data_dir, "sft")
        cached = models.cached_copy(spec, embedded_data_dir)
        assert cached is not None and loaded.source == str(cached)
        config = json.loads((cached / "config.json").read_text())
        assert "quantization_config" not in config, "the de-quantized copy must not claim GGUF quantization"
        assert next(loaded.model.parameters()).dtype.is_floating_point
    leftovers = [p.name for p in models.models_dir(embedded_data_dir).iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert models.load_model("embedded:smollm2-135m-instruct", embedded_data_dir).tokenizer.chat_template


def test_generate_cli_prints_three_answers_as_json_offline(embedded_data_dir):
    result = run_cli(
        "generate",
        "Why is the sky blue?",
        "--json",
        "--max-new-tokens",
        "24",
        "--seed",
        "1",
        "--preset",
        "embedded",
        data_dir=embedded_data_dir,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert (report["adapter_version"], report["serving_version"]) == (0, 0)  # a fresh data set: nothing trained
    answers = {arm: report[arm] for arm in ("base", "sft", "pref")}
    for arm, answer in answers.items():
        assert answer["text"].strip(), f"{arm} answered nothing"
        assert {"text", "model", "adapter_version", "new_tokens", "seconds"} <= answer.keys()
        assert 0 < answer["new_tokens"] <= 24
    # On a CPU the default precision quantizes the base model only, and every answer names the weights that wrote it.
    assert answers["base"]["model"] == "gemma-3-270m (int8)" and answers["sft"]["model"] == "smollm2-135m-instruct"
    assert answers["pref"]["adapter_version"] == 0
    assert "\nQ:" not in answers["base"]["text"] and "\n\n" not in answers["base"]["text"].strip()
    assert "sky" in answers["sft"]["text"].lower() or "light" in answers["sft"]["text"].lower()


def test_the_onnx_runtime_answers_as_the_torch_model_does(embedded_data_dir):
    """The fidelity rule on the real models: with the SFT model's fp32 copy (`--precision float`), greedy SFT and
    preference answers from the onnx runtime equal torch's token for token. The default (`auto`) measures this CPU
    once, serves the copy it chose and says why; the base model is int8 in both (each runtime's own int8)."""
    reports = {}
    for runtime, precision in (("onnx", "float"), ("torch", "auto"), ("onnx", "auto")):
        result = run_cli(
            "generate",
            "Give me three tips for sleeping better.",
            "--json",
            "--max-new-tokens",
            "48",
            "--temperature",
            "0",
            "--preset",
            "embedded",
            "--runtime",
            runtime,
            "--precision",
            precision,
            data_dir=embedded_data_dir,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        reports[runtime, precision] = json.loads(result.stdout)
        assert reports[runtime, precision]["runtime"] == runtime
    onnx, torch = reports["onnx", "float"], reports["torch", "auto"]
    for arm in ("sft", "pref"):
        assert (onnx[arm]["text"], onnx[arm]["new_tokens"]) == (torch[arm]["text"], torch[arm]["new_tokens"]), arm
        assert onnx[arm]["text"].strip()
    default = reports["onnx", "auto"]
    assert torch["base"]["model"] == default["base"]["model"] == "gemma-3-270m (int8)" and onnx["base"]["text"].strip()
    assert onnx["base"]["model"] == "gemma-3-270m"  # --precision float: both models float
    assert onnx["precisions"]["sft"] == {"precision": "fp32", "why": "--precision float"}
    chosen = reports["onnx", "auto"]["precisions"]["sft"]
    assert chosen["precision"] in ("fp32", "int4") and chosen["why"].startswith("calibrated on this CPU")
    assert default["sft"]["text"].strip()
    suffix = " (int4)" if chosen["precision"] == "int4" else ""  # every answer names the weights that wrote it
    assert default["sft"]["model"] == default["pref"]["model"] == f"smollm2-135m-instruct{suffix}"
    built = sorted(
        (p.name.split("-")[0], p.name.split("-onnx-")[1].split("-")[0])
        for p in models.models_dir(embedded_data_dir).iterdir()
        if "-onnx-" in p.name
    )  # base int8 (auto) and fp32 (float); the SFT model's fp32 and int4 copies, both measured by `auto`
    assert built == [("gemma", "fp32"), ("gemma", "int8"), ("smollm2", "fp32"), ("smollm2", "int4")]
    facts = json.loads(run_cli("info", "--json", data_dir=embedded_data_dir).stdout)
    (record,) = facts["calibration"].values()  # `info` says what this CPU serves and why
    assert record["precision"] == chosen["precision"] and record["cpu"] == facts["cpu"]


def test_info_reports_preset_and_cache_state(embedded_data_dir):
    result = run_cli("info", "--json", data_dir=embedded_data_dir)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["preset"] == "embedded" and facts["embedded_packages_installed"] is True
    assert facts["models"]["sft"]["spec"] == "embedded:smollm2-135m-instruct"
    for role in ("base", "sft"):  # converted by the embedded_data_dir fixture
        assert facts["models"][role]["converted_copy"] and facts["models"][role]["needs_conversion"] is False
    assert facts["data_dir"] == str(embedded_data_dir)
    assert facts["data_set"]["name"].startswith("smollm2-135m-instruct__gemma-3-270m-")
    assert facts["data_set"]["path"] == str(embedded_data_dir / "datasets" / facts["data_set"]["name"])


def test_unloadable_model_ends_with_a_short_message_not_a_trace(embedded_data_dir):
    result = run_cli("generate", "hi", "--sft", "nobody/no-such-model-xyz", data_dir=embedded_data_dir)
    assert result.returncode == 2
    assert "Could not load the sft model 'nobody/no-such-model-xyz'" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_prompt_is_refused_before_loading_models(tmp_path):
    result = run_cli("generate", "   ", data_dir=tmp_path)
    assert result.returncode == 2 and "prompt is empty" in result.stderr
    assert not models.models_dir(tmp_path).exists(), "an empty prompt must not trigger a model conversion"
