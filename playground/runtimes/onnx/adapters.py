"""A version's PEFT adapter for the onnx runtime: PEFT's `adapter_model.safetensors` → `adapter.onnx_adapter`
(ONNX Runtime's adapter format) beside it. The trainer writes it before publishing a version; the server converts
on demand (older or restored versions). PEFT's scale (alpha / r) is folded into B.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.onnx_adapter"


class AdapterConversionError(RuntimeError):
    """A PEFT adapter that the onnx runtime cannot serve (missing slots, unsupported LoRA variant)."""


_BUILDER_BLOCK = {"self_attn": "attn", "mlp": "mlp"}


def _slot_name(peft_key: str) -> str | None:
    """PEFT's name of a LoRA weight → the builder's name of the slot it fills, e.g.
    `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` → `model.layers.3.attn.q_proj.lora_A.MatMul.weight`."""
    match = re.search(r"layers\.(\d+)\.([A-Za-z_]+)\.([A-Za-z0-9_]+)\.(lora_A|lora_B)\.weight$", peft_key)
    if not match:
        return None
    layer, block, leaf, part = match.groups()
    return f"model.layers.{layer}.{_BUILDER_BLOCK.get(block, block)}.{leaf}.{part}.MatMul.weight"


def convert_adapter(peft_dir: str | os.PathLike, slots: dict | None = None) -> Path:
    """Write `adapter.onnx_adapter` beside PEFT's files (atomically) and return its path.
    slots: the model's LoRA slots (name → shape), to check the adapter fits before anything is served."""
    import numpy as np
    import onnxruntime as ort
    from safetensors.numpy import load_file

    folder = Path(peft_dir)
    config = json.loads((folder / "adapter_config.json").read_text())
    for unsupported in ("use_dora", "rank_pattern", "alpha_pattern"):
        if config.get(unsupported):
            raise AdapterConversionError(f"{unsupported} adapters cannot be served by the onnx runtime")
    rank = config["r"]
    scale = config["lora_alpha"] / (rank**0.5 if config.get("use_rslora") else rank)
    params = {}
    for key, weight in load_file(str(folder / "adapter_model.safetensors")).items():
        name = _slot_name(key)
        if name is None:
            raise AdapterConversionError(f"no LoRA slot for the adapter weight {key}")
        if slots is not None and name not in slots:
            raise AdapterConversionError(
                f"the served model has no LoRA slot for {key} (slots are built for the trainer's target modules)"
            )
        weight = weight.astype(np.float32)
        value = weight.T if ".lora_A." in name else (scale * weight).T  # the graph computes x @ A @ B
        params[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if slots is not None and set(slots) - set(params):
        missing = sorted(set(slots) - set(params))
        log.debug("adapter %s leaves %d LoRA slots at zero (e.g. %s)", folder, len(missing), missing[0])
    formatted = ort.AdapterFormat()
    formatted.set_adapter_version(1)
    formatted.set_model_version(1)
    formatted.set_parameters(params)
    target = folder / ADAPTER_FILE
    partial = folder / f".{ADAPTER_FILE}.{os.getpid()}.partial"
    formatted.export_adapter(str(partial))
    os.replace(partial, target)
    return target


def converted_adapter(peft_dir: str | os.PathLike, slots: dict | None = None) -> Path:
    """The version's converted adapter, converting it now if it is missing or older than PEFT's weights."""
    folder = Path(peft_dir)
    target = folder / ADAPTER_FILE
    weights = folder / "adapter_model.safetensors"
    if target.is_file() and weights.is_file() and target.stat().st_mtime >= weights.stat().st_mtime:
        return target
    return convert_adapter(folder, slots)
