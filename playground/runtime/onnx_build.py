"""Building what the onnx runtime serves: the ONNX copy of a transformers model (once, cached) and each adapter
version in ONNX Runtime's adapter format.

- **Build once** (`prepare_model`): a transformers folder → an ONNX folder under `<data dir>/models`, by
  onnxruntime-genai's model builder in a subprocess (it loads the torch model; the server should not hold that
  memory), atomically, cached by the source, the precision and the LoRA slots. The SFT model is built with
  zero-valued LoRA weights on the layers the trainer adapts, declared as graph inputs of any rank, so one set of
  weights serves both the SFT row (no adapter: the zeros) and the preference row (a version's adapter).
- **Adapters** (`convert_adapter`): PEFT's `adapter_model.safetensors` → `adapter.onnx_adapter` (ONNX Runtime's
  adapter format) beside it; the trainer writes it before publishing a version, the server converts on demand
  (older or restored versions). PEFT's scale (alpha / r) is folded into B.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import RuntimeUnavailable

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.onnx_adapter"
LORA_SLOTS_FILE = "lora_slots.json"
SLOT_RANK = "lora_rank"  # the symbolic dimension that lets an adapter of any rank fill a slot


class AdapterConversionError(RuntimeError):
    """A PEFT adapter that the onnx runtime cannot serve (missing slots, unsupported LoRA variant)."""


# ---- building ---------------------------------------------------------------------------------------------
def local_folder(source: str) -> str:
    """The model's files on disk: a folder as it is, a Hub id from the local Hub cache (transformers has just
    downloaded it)."""
    if Path(source).is_dir():
        return source
    from huggingface_hub import snapshot_download

    return snapshot_download(source)


def built_dir(models_dir: Path, folder: str, precision: str, lora_targets: tuple[str, ...]) -> Path:
    """Where the ONNX copy of the model in `folder` lives: keyed by what changes the graph (source files,
    precision, LoRA slots, builder version), so a changed input builds again instead of serving a stale copy."""
    folder = Path(folder)
    stamps = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in folder.iterdir() if f.is_file())
    key = json.dumps([str(folder.resolve()), stamps, precision, sorted(lora_targets),
                      importlib.metadata.version("onnxruntime-genai")])
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name)[:60]
    return Path(models_dir) / f"{name}-onnx-{precision}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare_model(source: str, models_dir: Path, precision: str = "fp32",
                  lora_targets: tuple[str, ...] = ()) -> Path:
    """The ONNX folder for a transformers model, built on first use (seconds to a minute; later starts load it).
    precision: `fp32`, or `int8` (int8 weights in blocks of 32, int8 activations)."""
    folder = local_folder(source)  # a Hub id asks the Hub (or its cache) once
    target = built_dir(models_dir, folder, precision, lora_targets)
    if (target / "genai_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    command = [sys.executable, "-m", "playground.runtime.onnx_worker", "build", folder, str(scratch / "model"),
               "--precision", precision, "--lora-targets", ",".join(lora_targets)]
    log.info("Building the ONNX copy of %s once into %s ...", source, target)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=child_env())
        if done.returncode != 0:
            last = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-1:]
            raise RuntimeUnavailable(f"onnxruntime-genai could not build {source} ({last[0] if last else 'no output'})."
                                     " Fix: --runtime torch serves it with transformers.")
        if not target.exists():
            os.replace(scratch / "model", target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _build(source: str, out: str, precision: str, lora_targets: list[str]) -> None:
    """Runs in its own process (`python -m playground.runtime.onnx_worker build`): the builder loads the torch model."""
    from onnxruntime_genai.models import builder

    read_config = builder.get_hf_details

    def transformers5_config(*args, **kwargs):
        # transformers 5 keeps Gemma 3's RoPE settings per attention type ({"full_attention": {...},
        # "sliding_attention": {...}}); this builder reads the older flat form.
        details = read_config(*args, **kwargs)
        config = details["hf_config"]
        rope = getattr(config, "rope_parameters", None)
        if isinstance(rope, dict) and "full_attention" in rope and "sliding_attention" in rope:
            config.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
            config.rope_parameters = dict(rope["full_attention"])
        return details

    builder.get_hf_details = transformers5_config
    # int8: MatMulNBits weights in blocks of 32 with int8 activations (accuracy_level=4); float activations
    # (level 1) follow the float model a little closer but decode ~50x slower on this CPU (docs/performance.md).
    options = ["accuracy_level=4"] if precision == "int8" else []
    with tempfile.TemporaryDirectory() as scratch:
        if lora_targets:
            options.append(f"adapter_path={_zero_adapter(source, lora_targets, Path(scratch) / 'lora')}")
        cache = str(Path(scratch) / "cache")
        extra = builder.parse_extra_options(None, source, out, precision, "cpu", cache, options or None)
        builder.create_model(None, source, out, precision, "cpu", cache, **extra)
    if lora_targets:
        _lora_slots_as_inputs(Path(out))


def _zero_adapter(source: str, targets: list[str], out: Path) -> Path:
    """A PEFT adapter whose weights are all zero: the builder makes a LoRA branch for each target layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(source),
                           LoraConfig(r=8, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.zero_()
    model.save_pretrained(out)
    return out


def _lora_slots_as_inputs(folder: Path) -> None:
    """Turn the baked LoRA weights into graph inputs with zero defaults and a symbolic rank: without an adapter
    the model is the SFT model; an adapter of any rank overrides them per generator."""
    import onnx

    path = folder / "model.onnx"
    graph_file = onnx.load(str(path), load_external_data=False)
    slots = {}
    for init in graph_file.graph.initializer:
        if ".lora_A." in init.name or ".lora_B." in init.name:
            shape = list(init.dims)
            if ".lora_A." in init.name:
                shape[1] = SLOT_RANK
            else:
                shape[0] = SLOT_RANK
            graph_file.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, shape))
            slots[init.name] = list(init.dims)
    if not slots:
        raise RuntimeError("the builder made no LoRA slots")
    onnx.save(graph_file, str(path))  # the weights stay in their external data file
    (folder / LORA_SLOTS_FILE).write_text(json.dumps(slots, indent=1))


# ---- adapters ---------------------------------------------------------------------------------------------
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
    scale = config["lora_alpha"] / (rank ** 0.5 if config.get("use_rslora") else rank)
    params = {}
    for key, weight in load_file(str(folder / "adapter_model.safetensors")).items():
        name = _slot_name(key)
        if name is None:
            raise AdapterConversionError(f"no LoRA slot for the adapter weight {key}")
        if slots is not None and name not in slots:
            raise AdapterConversionError(f"the served model has no LoRA slot for {key} (slots are built for the "
                                         f"trainer's target modules)")
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


def lora_slots(model_dir: Path) -> dict | None:
    path = Path(model_dir) / LORA_SLOTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def child_env() -> dict:
    """The environment of a child `python -m playground.runtime.onnx_worker`: this package importable from anywhere."""
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"TQDM_DISABLE": "1", "PYTHONPATH": path}
