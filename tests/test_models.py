"""Presets, model specs, load errors, and the atomic GGUF conversion cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from playground import conversion, models
from playground.models import ModelLoadError, load_model, resolve_preset


def test_auto_preset_prefers_embedded_when_installed(monkeypatch):
    monkeypatch.setattr(models, "embedded_available", lambda: True)
    assert resolve_preset("auto").name == "embedded"
    assert resolve_preset(None).base == "embedded:gemma-3-270m"
    monkeypatch.setattr(models, "embedded_available", lambda: False)
    assert resolve_preset("auto").name == "smollm2-135m"
    assert resolve_preset("auto").sft == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_overrides_replace_one_side_or_both():
    one = resolve_preset("qwen2.5-0.5b", sft="/models/my-sft")
    assert (one.base, one.sft) == ("Qwen/Qwen2.5-0.5B", "/models/my-sft")
    both = resolve_preset("qwen2.5-0.5b", base="a/b", sft="c/d")
    assert (both.name, both.base, both.sft) == ("custom", "a/b", "c/d")


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ModelLoadError, match="Unknown preset 'tiny-llama'.*smollm2-360m"):
        resolve_preset("tiny-llama")


def test_missing_folder_says_what_was_tried(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        load_model(str(tmp_path / "nope" / "model"), tmp_path, "sft")
    assert "No such model folder" in str(error.value)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="No such GGUF file"):
        load_model(str(tmp_path / "x.gguf"), tmp_path, "base")


def test_hub_id_offline_explains_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as error:
        load_model("someone/does-not-exist-model", tmp_path, "sft")
    message = str(error.value)
    assert "'someone/does-not-exist-model'" in message and "Hub id" in message
    assert "Offline mode" in message and "--sft" in message
    assert "Traceback" not in message


def test_corrupt_folder_is_a_clear_error(tmp_path, tiny_models):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tiny_models["sft"] / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelLoadError, match="Could not load the base model.*local folder"):
        load_model(str(broken), tmp_path, "base")


def test_unsupported_architecture_mentions_remote_code(tmp_path, tiny_models):
    odd = tmp_path / "odd"
    odd.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (odd / name).write_bytes((tiny_models["sft"] / name).read_bytes())
    config = json.loads((tiny_models["sft"] / "config.json").read_text())
    config["model_type"] = "frobnicator-9000"
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as error:
        load_model(str(odd), tmp_path, "sft")
    assert "--trust-remote-code" in str(error.value)


def test_local_folder_loads_in_eval_mode_with_pad_token(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["base"]), tmp_path, "base")
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token_id is not None
    assert loaded.source == str(tiny_models["base"])


def _fake_gguf_loader(tiny_dir: Path, fail_on_save: bool):
    """Stands in for transformers' GGUF de-quantization (slow, tested in the integration tests): what is
    tested here is our conversion cache around it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load(gguf, trust_remote_code):
        model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)
        if fail_on_save:

            def half_written(folder, *args, **kwargs):
                (Path(folder) / "model.safetensors").write_bytes(b"half")
                raise OSError("No space left on device")

            model.save_pretrained = half_written
        return model, tokenizer

    return load


@pytest.fixture()
def gguf_file(tmp_path) -> Path:
    path = tmp_path / "src" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF-not-really")
    return path


def test_gguf_conversion_is_cached_and_atomic(monkeypatch, tmp_path, tiny_models, gguf_file):
    data_dir = tmp_path / "data"
    # In this process (the app converts in a child process; the child runs the same convert_here).
    monkeypatch.setattr(models, "_convert_gguf", conversion.convert_here)
    monkeypatch.setattr(conversion, "_load_gguf", _fake_gguf_loader(tiny_models["sft"], fail_on_save=True))
    with pytest.raises(ModelLoadError, match="Could not load the sft model.*No space left"):
        load_model(str(gguf_file), data_dir, "sft")
    leftovers = list(models.models_dir(data_dir).iterdir())
    assert leftovers == [], f"a failed conversion must leave nothing behind: {leftovers}"
    assert models.cached_copy(str(gguf_file), data_dir) is None

    monkeypatch.setattr(conversion, "_load_gguf", _fake_gguf_loader(tiny_models["sft"], fail_on_save=False))
    loaded = load_model(str(gguf_file), data_dir, "sft")
    cached = models.cached_copy(str(gguf_file), data_dir)
    assert cached is not None and loaded.source == str(cached)
    assert (cached / "config.json").exists() and (cached / "tokenizer.json").exists()
    assert [p.name for p in models.models_dir(data_dir).iterdir()] == [cached.name]

    # A second load uses the copy: no second conversion.
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: pytest.fail("converted twice"))
    again = load_model(str(gguf_file), data_dir, "sft")
    assert again.source == str(cached)


def test_a_file_the_converter_process_refuses_is_a_clear_error(tmp_path, gguf_file):
    """The real child process (`python -m playground.conversion`) on a file that is not GGUF: a message with the
    converter's reason and a fix, nothing half-written left behind."""
    data_dir = tmp_path / "data"
    with pytest.raises(ModelLoadError, match="Could not convert tiny.gguf.*Fix:") as error:
        load_model(str(gguf_file), data_dir, "sft")
    assert "Traceback" not in str(error.value)
    assert list(models.models_dir(data_dir).iterdir()) == []


def test_one_parse_serves_every_reader_of_a_gguf_file(tmp_path):
    import gguf

    path = tmp_path / "x.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("answer", 42)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with conversion.one_gguf_parse():
        first, second = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is second and first.fields["answer"].contents() == 42
    assert gguf.GGUFReader(path) is not first  # only while converting


def test_int8_loading_quantizes_all_but_the_adapter_layers_and_still_generates(tiny_models, tmp_path):
    import torch

    from playground.int8 import int8_layer_types

    RowwiseLinear, RowwiseInt8Linear = int8_layer_types()
    plain = load_model(str(tiny_models["sft"]), tmp_path, "sft")
    int8 = load_model(str(tiny_models["sft"]), tmp_path, "sft", int8=True, keep_float=("q_proj", "v_proj"))
    kinds = {
        name.rsplit(".", 1)[-1]: type(m)
        for name, m in int8.model.named_modules()
        if isinstance(m, (torch.nn.Linear, RowwiseInt8Linear))
    }
    assert kinds["q_proj"] is RowwiseLinear and kinds["v_proj"] is RowwiseLinear, "LoRA's layers stay float"
    assert kinds["down_proj"] is RowwiseLinear, "its outlier activations stay float (int8.INT8_KEEP_FLOAT)"
    assert kinds["k_proj"] is RowwiseInt8Linear and kinds["up_proj"] is RowwiseInt8Linear
    assert kinds["lm_head"] is RowwiseInt8Linear
    assert not any(type(m) is torch.nn.Linear for m in int8.model.modules())
    assert int8.model.config._attn_implementation == "eager", "SDPA's CPU kernel splits work by batch size"
    assert plain.model.config._attn_implementation != "eager"
    assert int8.precision == "int8" and int8.name.endswith("(int8)")
    assert plain.precision == "float32" and not plain.name.endswith("(int8)")
    ids = plain.tokenizer("Q: hi\nA:", return_tensors="pt").input_ids
    with torch.inference_mode():
        close = torch.nn.functional.cosine_similarity(plain.model(ids).logits[0, -1], int8.model(ids).logits[0, -1], 0)
    assert close > 0.95, "int8 weights approximate the fp32 model"


def test_int8_rows_of_a_batch_do_not_affect_each_other(tiny_models, tmp_path):
    """fbgemm quantizes a whole call's activations with one scale; the engine promises row independence."""
    import torch

    int8 = load_model(str(tiny_models["sft"]), tmp_path, "sft", int8=True, keep_float=("q_proj",))
    quiet = int8.tokenizer("Say hello to the class", return_tensors="pt").input_ids
    loud = quiet * 0 + quiet.max()  # a row of different tokens, same length
    with torch.inference_mode():
        alone = int8.model(quiet).logits
        batched = int8.model(torch.cat([quiet, loud])).logits
    assert torch.equal(batched[0], alone[0])


def test_int8_model_takes_lora_adapters_and_refuses_ones_on_its_int8_layers(tiny_models, tiny_adapters, tmp_path):
    import json
    import shutil

    from playground.generation import AdapterError, Engine, Sampling

    def engine(keep):
        base = load_model(str(tiny_models["base"]), tmp_path, "base", int8=True)
        return Engine(base, load_model(str(tiny_models["sft"]), tmp_path, "sft", int8=True, keep_float=keep))

    served = engine(("q_proj", "v_proj"))
    greedy = Sampling(temperature=0, max_new_tokens=8, seed=0)
    before = served.generate("Explain gravity.", greedy, arms=("sft", "pref"))
    served.use_adapter(1, str(tiny_adapters[1]))
    after = served.generate("Explain gravity.", greedy, arms=("sft", "pref"))
    assert after["sft"].text == before["sft"].text and after["pref"].text != before["pref"].text
    lora = [n for n, _ in served.runtimes["sft"].peft.named_parameters() if "lora_A" in n]
    assert lora and all(".q_proj." in n or ".v_proj." in n for n in lora)

    # An adapter on layers that were quantized (the trainer was set to other target modules) is refused clearly.
    other = tmp_path / "mlp-adapter"
    shutil.copytree(tiny_adapters[1], other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(config | {"target_modules": ["up_proj"]}))
    with pytest.raises(AdapterError, match="It targets up_proj, which this server holds in int8.*--precision float"):
        served.use_adapter(2, str(other))
    assert served.adapter_version == 1
    assert served.generate("Explain gravity.", greedy, arms=("pref",))["pref"].text == after["pref"].text
