"""The SFT model's int4 ONNX copy (runtimes/onnx/quantize.py) and the calibration that chooses it per CPU
(runtimes/onnx/calibration.py), on tiny models whose weights are 4-bit already, as the embedded model's are (Q4_1
layers, a Q8_0 embedding, made with the gguf library): the 4-bit weights are exact, greedy answers agree with torch
fp32 within the bound, the SFT row of the gated batch is the plain int4 model, versions swap and roll back, the
choice is measured once per CPU and yields to the flags, and a crashed decode process fails only its arms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_lora_adapter, make_tiny_model

from playground.generation import Engine
from playground.models import Preset, models_dir
from playground.runtimes.onnx import build as onnx_build
from playground.runtimes.onnx import calibration
from playground.settings import Sampling

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Tell me a joke about cats."]
GREEDY = Sampling(temperature=0, max_new_tokens=24, seed=1)
TARGETS = ("q_proj", "v_proj")


def _four_bit_like_gguf(folder: Path) -> Path:
    """Round every Linear weight through Q4_1 and the (tied) embedding through Q8_0, the embedded SFT model's
    formats, so the fp32 weights are a 4-bit file de-quantized."""
    import torch
    from gguf import GGMLQuantizationType, quants
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() != 2:
                continue
            kind = GGMLQuantizationType.Q8_0 if "embed" in name else GGMLQuantizationType.Q4_1
            data = param.numpy().astype("float32")
            param.copy_(torch.from_numpy(quants.dequantize(quants.quantize(data, kind), kind)))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, real_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int4-models")
    return {
        "base": make_tiny_model(root / "base", real_tokenizer_dir, seed=1, chat=False, hidden=64),
        "sft": _four_bit_like_gguf(make_tiny_model(root / "sft", real_tokenizer_dir, seed=2, chat=True, hidden=64)),
    }


@pytest.fixture(scope="module")
def preset(tiny) -> Preset:
    return Preset("tiny", str(tiny["base"]), str(tiny["sft"]), "test")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("int4-adapters")
    return {v: make_lora_adapter(tiny["sft"], root / f"v{v}", seed=40 + v) for v in (1, 2)}


@pytest.fixture(scope="module")
def int4_engine(tmp_path_factory, preset):
    engine = Engine.from_preset(
        preset, tmp_path_factory.mktemp("int4-data"), precision="int4", runtime="onnx", threads=1
    )
    yield engine
    engine.close()


def _texts(engine, prompt, sampling=GREEDY):
    return {arm: (a.text, a.new_tokens, a.adapter_version) for arm, a in engine.generate(prompt, sampling).items()}


def _greedy(folder: Path, ids: list[int], tokens: int, gated: bool) -> tuple[list[int], list]:
    """Greedy tokens and each step's logits from an ONNX folder, one row (the gate, if any, off)."""
    import numpy as np
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=1024)
    generator = og.Generator(model, params)
    scales = np.zeros((1, 1, 1), dtype=np.float32)
    if gated:
        generator.set_model_input(onnx_build.ROW_SCALE, scales)
    generator.append_tokens(np.asarray([ids], dtype=np.int32))
    out, logits = [], []
    for _ in range(tokens):
        logits.append(np.asarray(generator.get_logits())[0, -1].copy())
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    del generator, scales
    return out, logits


def _prompt_ids(engine, prompt: str) -> list[int]:
    from playground.prompting import chat_prompt

    tokenizer = engine.sft.tokenizer
    return tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False).input_ids


@pytest.mark.slow
def test_the_int4_copy_holds_the_4bit_weights_exactly(int4_engine, tmp_path):
    """Every layer but the LoRA slots is MatMulNBits (4-bit; the output layer 8-bit), and with float activations
    the int4 copy decodes the fp32 copy's tokens with the same logits: the 4-bit weights and their block offsets
    are the fp32 weights, nothing rounded away. (Served, activations are int8 per block: the next test.)"""
    import numpy as np
    import onnx

    folder = int4_engine.runtimes["sft"].workers[0].model_dir
    assert "-onnx-int4-" in folder.name and int4_engine.runtimes["sft"].precision == "int4"
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    quantized = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in graph.node
                 if n.op_type == "MatMulNBits"}  # fmt: skip
    float_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and "/lora_" not in n.name]
    assert all(name.endswith(("/OffsetMatMul",)) for name in float_matmuls), float_matmuls
    assert {a["bits"] for name, a in quantized.items() if "lm_head" not in name} == {4}
    assert [a["bits"] for name, a in quantized.items() if "lm_head" in name] == [8]
    assert {a["accuracy_level"] for a in quantized.values()} == {4}
    assert onnx_build.ROW_SCALE in {i.name for i in graph.input}  # the gate and slots survive quantizing

    float_activations = tmp_path / "int4-float-activations"
    shutil.copytree(folder, float_activations)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                attribute.i = 0
    onnx.save(model, str(float_activations / "model.onnx"))
    fp32 = onnx_build.prepare_model(str(int4_engine.sft.source), folder.parent, "fp32", TARGETS)
    for prompt in PROMPTS:
        ids = _prompt_ids(int4_engine, prompt)
        want, want_logits = _greedy(fp32, ids, 16, gated=True)
        got, got_logits = _greedy(float_activations, ids, 16, gated=True)
        assert got == want, prompt
        # The output layer is 8-bit (the Q8_0 embedding re-quantized per block: within a step of it).
        assert max(float(np.abs(a - b).max()) for a, b in zip(got_logits, want_logits)) < 0.05


@pytest.mark.slow
def test_greedy_answers_agree_with_torch_fp32_within_the_bound(int4_engine, tiny, adapters, tmp_path):
    """Next-token agreement with torch fp32 under teacher forcing (the bench's measure) for the SFT and the
    preference row of one batch: at least the bound the calibration holds every copy to."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from bench.fidelity import onnx_fidelity

    torch_sft = AutoModelForCausalLM.from_pretrained(tiny["sft"]).eval()
    torch_pref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["sft"]), adapters[1]).eval()
    torch_base = AutoModelForCausalLM.from_pretrained(tiny["base"]).eval()
    int4_engine.use_adapter(1, str(adapters[1]))
    try:
        agreement = onnx_fidelity(int4_engine, torch_sft, torch_pref, torch_base, PROMPTS, 32)
    finally:
        int4_engine.use_adapter(0, None)
    for arm in ("sft", "pref"):
        assert agreement[arm]["next_token_agreement"] >= calibration.FIDELITY_BOUND, (arm, agreement)
    assert agreement["base"]["positions"] > 0  # reported too (int8 here, as with --precision auto)


@pytest.mark.slow
def test_the_sft_row_is_the_plain_int4_model_exactly(int4_engine, adapters):
    """With a version's adapter active on the batch, the SFT row (gate 0) decodes exactly what the int4 copy of
    the model without any LoRA slots decodes: the only difference between the SFT and preference rows is the
    adapter."""
    worker = int4_engine.runtimes["sft"].workers[0]
    plain = onnx_build.prepare_model(str(int4_engine.sft.source), worker.model_dir.parent, "int4", ())
    assert plain != worker.model_dir and onnx_build.lora_slots(plain) is None
    int4_engine.use_adapter(1, str(adapters[1]))
    try:
        for prompt in PROMPTS:
            ids = _prompt_ids(int4_engine, prompt)
            rows = [[], []]
            for step in worker.generate(ids, [(1, None), (1, "v1")], GREEDY, 24):
                for row, token in zip(rows, step):
                    if token is not None:
                        row.append(token)
            want, _ = _greedy(plain, ids, len(rows[0]), gated=False)
            assert rows[0] == want, prompt
            assert rows[1] != rows[0]  # the preference row really runs the adapter
    finally:
        int4_engine.use_adapter(0, None)


@pytest.mark.slow
def test_a_version_hot_swaps_and_rolls_back_on_the_int4_copy(int4_engine, adapters):
    before = _texts(int4_engine, PROMPTS[0])
    assert before["pref"][:2] == before["sft"][:2]  # version 0: the preference arm is the SFT model
    int4_engine.use_adapter(1, str(adapters[1]))
    first = _texts(int4_engine, PROMPTS[0])
    int4_engine.use_adapter(2, str(adapters[2]))
    second = _texts(int4_engine, PROMPTS[0])
    int4_engine.use_adapter(1, str(adapters[1]))  # a rollback
    again = _texts(int4_engine, PROMPTS[0])
    int4_engine.use_adapter(0, None)
    assert first["pref"][2] == 1 and second["pref"][2] == 2 and again == first
    assert first["pref"][0] != second["pref"][0] != before["pref"][0]
    assert first["sft"] == second["sft"] == before["sft"]  # the SFT arm never moves with a version
    assert _texts(int4_engine, PROMPTS[0]) == before


def test_the_decision_takes_the_fastest_copy_within_the_bound():
    fast_but_off = {"fp32": {"tokens_per_s": 60.0}, "int4": {"tokens_per_s": 160.0, "agreement": 0.80, "positions": 96}}
    assert calibration.decide(fast_but_off)["precision"] == "fp32"
    assert "too low" in calibration.decide(fast_but_off)["why"]
    close = {"fp32": {"tokens_per_s": 60.0}, "int4": {"tokens_per_s": 160.0, "agreement": 0.93, "positions": 96}}
    assert calibration.decide(close)["precision"] == "int4"  # within two standard errors of 0.95: not a miss
    slower = {"fp32": {"tokens_per_s": 60.0}, "int4": {"tokens_per_s": 50.0, "agreement": 1.0, "positions": 96}}
    assert calibration.decide(slower)["precision"] == "fp32"


@pytest.mark.slow
def test_the_calibration_measures_once_per_cpu_and_yields_to_the_flags(preset, tmp_path, monkeypatch):
    """`--precision auto` on a fresh model cache measures the copies, serves the choice and keeps it keyed by
    this CPU; a restart reads it; a CPU of another kind measures again; `--precision` and `--runtime` override."""
    from helpers import tiny_round

    from playground.core import Playground
    from playground.settings import ModelSettings
    from playground.ui.status import status_line

    engine = Engine.from_preset(preset, tmp_path, precision="auto", runtime="onnx", threads=1)
    models = ModelSettings(base=preset.base, sft=preset.sft, data_dir=str(tmp_path))
    pg = Playground(models, tiny_round(), engine=engine)
    try:
        served = engine.runtimes["sft"]
        assert served.precision in calibration.CANDIDATES and served.precision_why.startswith("calibrated")
        assert engine.precisions()["sft"]["precision"] == served.precision
        assert f"SFT weights `{served.precision}` (measured fastest on this CPU)" in status_line(pg, "")
    finally:
        pg.close()
        engine.close()
    kept = json.loads((models_dir(tmp_path) / calibration.FILE).read_text())
    (record,) = kept[calibration.cpu_key()].values()
    assert record["precision"] == served.precision and set(record["measured"]) == {"fp32", "int4"}
    assert record["measured"]["fp32"]["tokens_per_s"] > 0 and 0 <= record["measured"]["int4"]["agreement"] <= 1
    assert record["threads"] == 1 and set(record["measured"]["int4"]["by_threads"]) == {"1"}  # threads=1: one layout
    assert served.workers[0].threads == record["threads"]
    assert record["cpu"] == calibration.cpu_identity()

    def measured_again(*_):
        raise AssertionError("measured again")

    monkeypatch.setattr(calibration, "_run_measure", measured_again)
    again = Engine.from_preset(preset, tmp_path, precision="auto", runtime="onnx", threads=1)
    try:
        assert again.runtimes["sft"].precision == served.precision  # read back, not measured
    finally:
        again.close()
    forced = Engine.from_preset(preset, tmp_path, precision="float", runtime="onnx", threads=1)
    try:
        assert (
            forced.runtimes["sft"].precision == "fp32"
            and "-onnx-fp32-" in forced.runtimes["sft"].workers[0].model_dir.name
        )
    finally:
        forced.close()
    on_torch = Engine.from_preset(preset, tmp_path, precision="auto", runtime="torch", threads=1)
    assert on_torch.describe() == {"base": "torch", "sft": "torch"}
    assert on_torch.precisions()["sft"] == {"precision": "float32", "why": None}

    other = {"model": "Some Other CPU", "flags": ["avx2"]}
    monkeypatch.setattr(calibration, "cpu_identity", lambda: other)
    monkeypatch.setattr(
        calibration,
        "_run_measure",
        lambda folders, *_: {  # figures of a (fake) CPU where int4 with 2 threads per process is fastest
            f: {
                "tokens_per_s_by_threads": {"1": 10.0 * (i + 1), "2": 15.0 * (i + 1)},
                "agreement": 1.0,
                "positions": 96,
            }
            for i, f in enumerate(folders)
        },
    )
    elsewhere = Engine.from_preset(preset, tmp_path, precision="auto", runtime="onnx")
    try:
        assert elsewhere.runtimes["sft"].precision == "int4"
        assert elsewhere.runtimes["sft"].workers[0].threads == 2  # the thread layout measured fastest
        assert "with 2 threads" in elsewhere.runtimes["sft"].precision_why
    finally:
        elsewhere.close()
    kept = json.loads((models_dir(tmp_path) / calibration.FILE).read_text())
    assert len(kept) == 2 and calibration.cpu_key(other) in kept


@pytest.mark.slow
def test_a_crashed_decode_process_fails_only_its_arms(int4_engine):
    """The SFT decode process dies mid-answer (native code crashing, out of memory): the SFT and preference answers
    say so, the base answer finishes, and the next request starts the process again."""
    worker = int4_engine.runtimes["sft"].workers[0]
    stream = int4_engine.stream(PROMPTS[1], Sampling(temperature=0, max_new_tokens=400, seed=1))
    next(stream)
    worker.process.kill()
    *_, final = stream
    assert final["sft"].error and final["pref"].error and "exited" in final["sft"].error
    assert final["base"].error is None and final["base"].text.strip()
    after = int4_engine.generate(PROMPTS[0], GREEDY)
    assert after["sft"].error is None and after["sft"].new_tokens > 0 and worker.restarts >= 1, after["sft"]
