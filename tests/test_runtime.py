"""The onnx serving runtime (runtime/onnx_*.py) against the torch runtime it stands in for, on tiny models built in the test:
same greedy tokens with and without adapters, hot swap, per-row seeds, cancel, a dead worker, bad adapters, and
`auto` falling back to torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_lora_adapter, make_tiny_model

from playground import runtimes as runtime
from playground.generation import AdapterError, Engine
from playground.models import Preset
from playground.runtimes.onnx import adapters as adapters_module
from playground.runtimes.onnx import build as onnx_build
from playground.runtimes.onnx import client as onnx_runtime
from playground.settings import Sampling

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Tell me a joke about cats."]
GREEDY = Sampling(temperature=0, max_new_tokens=24, seed=1)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, real_tokenizer_dir) -> dict[str, Path]:
    """The shared tiny models, with heads of 16 (ONNX Runtime's attention kernel needs a multiple of 16)."""
    root = tmp_path_factory.mktemp("runtime-models")
    return {
        "base": make_tiny_model(root / "base", real_tokenizer_dir, seed=1, chat=False, hidden=64),
        "sft": make_tiny_model(root / "sft", real_tokenizer_dir, seed=2, chat=True, hidden=64),
    }


@pytest.fixture(scope="module")
def engines(tmp_path_factory, tiny_models):
    """One onnx engine and one torch engine over the same tiny models (float: the fidelity rule's setting)."""
    data = tmp_path_factory.mktemp("runtime-data")
    preset = Preset("tiny", str(tiny_models["base"]), str(tiny_models["sft"]), "test")
    onnx = Engine.from_preset(preset, data, precision="float", runtime="onnx", threads=1)
    torch_engine = Engine.from_preset(preset, data, precision="float", runtime="torch", threads=1)
    yield onnx, torch_engine
    onnx.close()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_models) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("runtime-adapters")
    return {v: make_lora_adapter(tiny_models["sft"], root / f"v{v}", seed=20 + v) for v in (1, 2)}


def _texts(engine, prompt, sampling=GREEDY, history=None):
    answers = engine.generate(prompt, sampling, history=history)
    return {arm: (a.text, a.new_tokens, a.finish_reason, a.adapter_version) for arm, a in answers.items()}


@pytest.mark.slow
def test_the_onnx_copy_is_built_once_with_lora_slots(engines, tiny_models):
    onnx, _ = engines
    assert onnx.runtime == "onnx" and onnx.base.model is None and onnx.sft.model is None  # no torch weights held
    slots = onnx.runtimes["sft"].workers[0].slots
    assert slots and all(".lora_A." in name or ".lora_B." in name for name in slots)
    assert {name.split(".")[4] for name in slots} == {"q_proj", "v_proj"}  # the trainer's targets
    assert onnx.runtimes["base"].workers[0].slots is None  # the base model takes no adapter
    # A second engine over the same models reuses the built folders.
    folder = onnx.runtimes["sft"].workers[0].model_dir
    stamp = (folder / "model.onnx").stat().st_mtime
    again = onnx_build.prepare_model(str(tiny_models["sft"]), folder.parent, "fp32", ("q_proj", "v_proj"))
    assert again == folder and (folder / "model.onnx").stat().st_mtime == stamp


@pytest.mark.slow
def test_greedy_answers_equal_the_torch_runtime(engines):
    onnx, torch_engine = engines
    for prompt in PROMPTS:
        assert _texts(onnx, prompt) == _texts(torch_engine, prompt), prompt
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    assert _texts(onnx, "And you?", history=history) == _texts(torch_engine, "And you?", history=history)


@pytest.mark.slow
def test_adapters_swap_in_and_match_peft(engines, adapters):
    onnx, torch_engine = engines
    try:
        for version in (1, 2):
            for engine in engines:
                engine.use_adapter(version, str(adapters[version]))
            assert (
                adapters[version] / adapters_module.ADAPTER_FILE
            ).is_file()  # converted on demand, beside PEFT's files
            assert onnx.runtimes["sft"].workers[0].adapters == {
                f"v{version}": str(adapters[version] / adapters_module.ADAPTER_FILE)
            }
            for prompt in PROMPTS[:2]:
                got, want = _texts(onnx, prompt), _texts(torch_engine, prompt)
                assert got == want, (version, prompt)
                assert got["pref"][3] == version
            assert got["pref"][0] != got["sft"][0]  # the adapter really changes the answer
    finally:
        for engine in engines:
            engine.use_adapter(0, None)
    assert onnx.runtimes["sft"].workers[0].adapters == {}
    assert _texts(onnx, PROMPTS[0]) == _texts(torch_engine, PROMPTS[0])


@pytest.mark.slow
def test_sampling_is_reproducible_per_seed(engines):
    onnx, _ = engines

    def sampled(seed):
        return _texts(onnx, PROMPTS[1], Sampling(temperature=1.0, top_p=0.95, max_new_tokens=24, seed=seed))

    first, again, other = sampled(5), sampled(5), sampled(6)
    assert first == again
    assert first != other
    assert first["sft"] == first["pref"]  # version 0: the preference arm is the SFT model, same seed


@pytest.mark.slow
def test_a_cancelled_answer_frees_the_worker(engines):
    onnx, torch_engine = engines
    stream = onnx.stream(PROMPTS[0], Sampling(temperature=0, max_new_tokens=200, seed=1))
    next(stream)
    stream.close()  # a closed browser tab
    assert _texts(onnx, PROMPTS[2]) == _texts(torch_engine, PROMPTS[2])


@pytest.mark.slow
def test_a_dead_worker_starts_again_with_its_adapter(engines, adapters):
    onnx, torch_engine = engines
    try:
        for engine in engines:
            engine.use_adapter(1, str(adapters[1]))
        worker = onnx.runtimes["sft"].workers[0]
        worker.process.kill()
        worker.process.wait()
        assert _texts(onnx, PROMPTS[0]) == _texts(torch_engine, PROMPTS[0])  # restarted, v1 loaded again
        assert worker.restarts == 1
    finally:
        for engine in engines:
            engine.use_adapter(0, None)


@pytest.mark.slow
def test_bad_adapters_are_refused_and_the_served_one_stays(engines, adapters, tiny_models, tmp_path):
    onnx, _ = engines
    onnx.use_adapter(1, str(adapters[1]))
    before = _texts(onnx, PROMPTS[0])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapters[2], corrupt)
    (corrupt / adapters_module.ADAPTER_FILE).unlink(missing_ok=True)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="could not be loaded"):
        onnx.use_adapter(3, str(corrupt))
    other_layers = tmp_path / "o_proj"
    _adapter_on(tiny_models["sft"], other_layers, ["o_proj"])
    with pytest.raises(AdapterError, match="no LoRA slot.*--runtime torch"):
        onnx.use_adapter(4, str(other_layers))
    assert onnx.adapter_version == 1 and _texts(onnx, PROMPTS[0]) == before
    onnx.use_adapter(0, None)


def _adapter_on(sft_dir: Path, out: Path, targets: list[str]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(sft_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.save_pretrained(out)


def test_conversion_folds_the_lora_scale(adapters):
    """The converted weights are PEFT's, transposed, with alpha/r folded into B (the graph computes x @ A @ B)."""
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    path = adapters_module.convert_adapter(adapters[1])
    read = ort.AdapterFormat.read_adapter(str(path))  # kept alive: the arrays below view its memory
    converted = {k: v.numpy().copy() for k, v in read.get_parameters().items()}
    config = json.loads((adapters[1] / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    for key, weight in load_file(str(adapters[1] / "adapter_model.safetensors")).items():
        name = adapters_module._slot_name(key)
        want = weight.T if "lora_A" in key else scale * weight.T
        np.testing.assert_allclose(converted[name], want, rtol=1e-6)


@pytest.mark.slow
def test_a_model_onnx_runtime_cannot_run_fails_at_start(real_tokenizer_dir, tmp_path):
    """Heads of 8 build, but ONNX Runtime's attention kernel refuses them: the worker says so when it starts."""
    folder = make_tiny_model(tmp_path / "heads8", real_tokenizer_dir, seed=3, chat=True, hidden=32)
    built = onnx_build.prepare_model(str(folder), tmp_path / "models")
    with pytest.raises(onnx_runtime.WorkerError, match="head_size"):
        onnx_runtime.DecodeWorker(built, 1, "sft")


def test_auto_falls_back_to_torch_when_the_onnx_build_fails(tiny_models, tmp_path, monkeypatch):
    from playground.core import Playground
    from playground.models import ModelLoadError
    from playground.settings import ModelSettings

    def cannot_build(*args, **kwargs):
        raise runtime.RuntimeUnavailable("onnxruntime-genai could not build it (unsupported architecture)")

    monkeypatch.setattr(onnx_build, "prepare_model", cannot_build)
    settings = dict(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path), persist="off")
    playground = Playground(ModelSettings(**settings, runtime="auto"))
    try:
        engine = playground.load_models()
        assert engine.runtime == "torch" and "unsupported architecture" in engine.runtime_note
        assert engine.generate(PROMPTS[0], GREEDY)["sft"].done
    finally:
        playground.close()
    strict = Playground(ModelSettings(**settings, runtime="onnx"))
    try:
        with pytest.raises(ModelLoadError, match="unsupported architecture"):
            strict.load_models()
    finally:
        strict.close()


def test_the_trainer_prepares_the_serving_format(adapters, tmp_path):
    from playground.training.runner import _prepare_for_serving

    folder = tmp_path / "round"
    shutil.copytree(adapters[2], folder)
    (folder / adapters_module.ADAPTER_FILE).unlink(missing_ok=True)
    _prepare_for_serving(folder)
    assert (folder / adapters_module.ADAPTER_FILE).stat().st_size > 0
    assert (
        adapters_module.converted_adapter(folder) == folder / adapters_module.ADAPTER_FILE
    )  # fresh: not converted again


@pytest.mark.slow
def test_two_chat_workers_give_the_same_answers(engines, adapters, tiny_models, tmp_path_factory):
    """--chat-workers 2 (the fallback layout: the SFT and preference rows in their own processes) answers as the
    default one batch does and as torch does; a duel's two preference rows are reproducible per seed either way."""
    onnx, torch_engine = engines
    preset = Preset("tiny", str(tiny_models["base"]), str(tiny_models["sft"]), "test")
    spread = Engine.from_preset(
        preset, tmp_path_factory.mktemp("spread"), precision="float", runtime="onnx", threads=1, chat_workers=2
    )
    try:
        assert len(spread.runtimes["sft"].workers) == 2 and len(onnx.runtimes["sft"].workers) == 1
        for engine in (spread, onnx, torch_engine):
            engine.use_adapter(1, str(adapters[1]))
        assert _texts(spread, PROMPTS[1]) == _texts(torch_engine, PROMPTS[1]) == _texts(onnx, PROMPTS[1])
        sampling = Sampling(temperature=1.0, top_p=0.95, max_new_tokens=16, seed=9)
        duels = [{k: a.text for k, a in engine.duel(PROMPTS[0], sampling).items()} for engine in (spread, onnx, onnx)]
        assert duels[0] == duels[1] == duels[2] and duels[0]["a"] != duels[0]["b"]
        sampled = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=4)
        assert _texts(spread, PROMPTS[2], sampled) == _texts(onnx, PROMPTS[2], sampled)
    finally:
        spread.close()
        for engine in (onnx, torch_engine):
            engine.use_adapter(0, None)


@pytest.mark.slow
def test_the_sft_and_preference_rows_decode_as_one_batch(engines, adapters):
    """One generator of two rows, the LoRA branch gated per row, gives each row what it gives alone: the SFT row
    is the model without the adapter, the preference row the model with it (greedy and sampled, per seed)."""
    onnx, _ = engines
    worker = onnx.runtimes["sft"].workers[0]
    prompt = onnx.sft.tokenizer(PROMPTS[0]).input_ids
    onnx.use_adapter(1, str(adapters[1]))
    try:
        for sampling in (GREEDY, Sampling(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=3)):

            def tokens(rows, sampling=sampling):
                steps, out = worker.generate(prompt, rows, sampling, 24), [[] for _ in rows]
                for step in steps:
                    for row, token in zip(out, step):
                        row.append(token)
                return out

            batch = tokens([(3, None), (3, "v1")])
            assert batch == [tokens([(3, None)])[0], tokens([(3, "v1")])[0]]
            assert batch[0] != batch[1]  # the gate really lets the adapter through on one row only
    finally:
        onnx.use_adapter(0, None)


@pytest.mark.slow
def test_a_first_start_serves_the_base_model_with_torch_while_its_onnx_copy_builds(engines, tiny_models, tmp_path):
    """serve_while_building (the app's first start): the base arm answers from torch weights at once, its ONNX
    copy builds in the background and takes over; answers are the same before and after, and a later start
    finds the copy built."""
    _, torch_engine = engines
    preset = Preset("tiny", str(tiny_models["base"]), str(tiny_models["sft"]), "test")
    options = dict(precision="float", runtime="onnx", threads=1, serve_while_building=True)
    first = Engine.from_preset(preset, tmp_path, **options)
    try:
        assert first.describe() == {"base": "torch", "sft": "onnx"} and first.preparing_roles() == ["base"]
        assert _texts(first, PROMPTS[0]) == _texts(torch_engine, PROMPTS[0])  # answered while it builds
        assert first.wait_prepared(timeout=300)
        assert first.describe() == {"base": "onnx", "sft": "onnx"} and first.base.model is None  # torch weights gone
        assert _texts(first, PROMPTS[1]) == _texts(torch_engine, PROMPTS[1])
    finally:
        first.close()
    again = Engine.from_preset(preset, tmp_path, **options)
    try:
        assert again.describe() == {"base": "onnx", "sft": "onnx"} and again.preparing_roles() == []
    finally:
        again.close()


@pytest.mark.slow
def test_the_sft_weights_load_on_demand_for_scoring(engines):
    """The simulated voter's fluency yardstick needs torch weights; the onnx engine loads them only then."""
    onnx, torch_engine = engines
    answer = "Paris is the capital of France."
    assert onnx.scoring.sft_nll(PROMPTS[0], answer) == pytest.approx(
        torch_engine.scoring.sft_nll(PROMPTS[0], answer), rel=1e-5
    )
    assert onnx.sft.model is not None and onnx.base.model is None


@pytest.mark.slow
def test_the_implicit_reward_is_the_same_on_both_runtimes(engines, adapters, tmp_path):
    """Why this answer, on the onnx runtime: scored with the on-demand torch weights and the version's PEFT files,
    it equals the torch runtime's; the served adapter stays what it was."""
    from playground.explain import explain
    from playground.store import Store

    onnx, torch_engine = engines
    store = Store.open(tmp_path)
    comparison, _ = store.add_comparison(
        PROMPTS[0], "s", answers=[{"arm": "sft", "text": "Paris is the capital of France.", "model": "tiny"}]
    )
    for v in (1, 2):
        assert (
            store.finish_round(
                store.start_round(store.serving_version(), [], {"beta": 0.1}, None), str(adapters[v]), {}
            )
            == v
        )
    for engine in engines:
        engine.use_adapter(1, str(adapters[1]))
    serving_before = _texts(onnx, PROMPTS[1])
    for version in (1, 2):  # the serving version and another one
        on_onnx = explain(onnx, store, comparison, "sft", version)
        on_torch = explain(torch_engine, store, comparison, "sft", version)
        assert on_onnx.total_reward != 0
        assert on_onnx.total_reward == pytest.approx(on_torch.total_reward, rel=1e-4, abs=1e-5)
        assert [t["text"] for t in on_onnx.tokens] == [t["text"] for t in on_torch.tokens]
    assert onnx.adapter_version == 1 and _texts(onnx, PROMPTS[1]) == serving_before
    assert onnx.scoring._runtime.adapters == [], "the scoring adapter is dropped again"
    for engine in engines:
        engine.use_adapter(0, None)
