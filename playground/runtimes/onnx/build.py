"""Building what the onnx runtime serves: the ONNX copy of a transformers model, once, cached.

- **Build once** (`prepare_model`): a transformers folder → an ONNX folder under `<data dir>/models`, by
  onnxruntime-genai's model builder in a subprocess (it loads the torch model; the server should not hold that
  memory), atomically, cached by the source, the precision and the LoRA slots. The SFT model is built with
  zero-valued LoRA weights on the layers the trainer adapts, declared as graph inputs of any rank, so one set of
  weights serves both the SFT row (no adapter: the zeros) and the preference row (a version's adapter). Each LoRA
  branch is multiplied by a per-row scale (`ROW_SCALE`, a graph input of shape [rows, 1, 1]): a batch of two rows
  with one adapter active and scales 0 and 1 decodes the SFT and the preference answer in one pass over the weights.
- **int4** (`prepare_model(..., "int4")`): the fp32 copy above, its layers then 4-bit by ONNX Runtime's quantizer
  (quantize.py; exact for the embedded SFT model, whose weights are 4-bit already), LoRA slots and gate unchanged.
The adapters of each version are converted in adapters.py.
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

from ...processes import child_env, last_words
from .. import RuntimeUnavailable
from ..zero_adapter import zero_adapter

log = logging.getLogger(__name__)

LORA_SLOTS_FILE = "lora_slots.json"
SLOT_RANK = "lora_rank"  # the symbolic dimension that lets an adapter of any rank fill a slot
ROW_SCALE = "lora_row_scale"  # per row: 1 applies the active adapter, 0 leaves the row the SFT model
GRAPH_REVISION = 2  # of what _lora_slots_as_inputs makes; a new one builds again instead of serving an old graph
QUANTIZE_REVISION = 1  # of what quantize.py makes from the fp32 copy
PRECISIONS = ("fp32", "int8", "int4")


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
    key = [
        str(folder.resolve()),
        stamps,
        precision,
        sorted(lora_targets),
        importlib.metadata.version("onnxruntime-genai"),
    ]
    if lora_targets:  # the graph with slots changed since; a plain model's key (and cache) stays as it was
        key.append(GRAPH_REVISION)
    if precision == "int4":
        key.append(QUANTIZE_REVISION)
    key = json.dumps(key)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder.name)[:60]
    return Path(models_dir) / f"{name}-onnx-{precision}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare_model(source: str, models_dir: Path, precision: str = "fp32", lora_targets: tuple[str, ...] = ()) -> Path:
    """The ONNX folder for a transformers model, built on first use (seconds to a minute; later starts load it).
    precision: `fp32`; `int8` (the builder's int8 weights in blocks of 32, int8 activations); `int4` (the fp32 copy
    with 4-bit layers, quantize.py)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown ONNX precision {precision!r}")
    folder = local_folder(source)  # a Hub id asks the Hub (or its cache) once
    target = built_dir(models_dir, folder, precision, lora_targets)
    if (target / "genai_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if precision == "int4":
        fp32 = prepare_model(source, models_dir, "fp32", lora_targets)
        step = ["quantize", str(fp32)]
    else:
        step = ["build", folder]
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    command = [sys.executable, "-m", "playground.runtimes.onnx.worker", *step, str(scratch / "model")]
    if precision != "int4":
        command += ["--precision", precision, "--lora-targets", ",".join(lora_targets)]
    log.info("Building the %s ONNX copy of %s once into %s ...", precision, source, target)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=child_env())
        if done.returncode != 0:
            raise RuntimeUnavailable(
                f"onnxruntime-genai could not build {source} ({last_words(done.stderr or done.stdout) or 'no output'})."
                " Fix: --runtime torch serves it with transformers."
            )
        if not target.exists():
            os.replace(scratch / "model", target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _build(source: str, out: str, precision: str, lora_targets: list[str]) -> None:
    """Runs in its own process (`python -m playground.runtimes.onnx.worker build`): the builder loads the torch model."""
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
    # (level 1) follow the float model a little closer but decode far slower on a CPU (docs/performance.md).
    options = ["accuracy_level=4"] if precision == "int8" else []
    with tempfile.TemporaryDirectory() as scratch:
        if lora_targets:
            options.append(f"adapter_path={zero_adapter(source, lora_targets, Path(scratch) / 'lora', rank=8)}")
        cache = str(Path(scratch) / "cache")
        extra = builder.parse_extra_options(None, source, out, precision, "cpu", cache, options or None)
        builder.create_model(None, source, out, precision, "cpu", cache, **extra)
    if lora_targets:
        _lora_slots_as_inputs(Path(out))


def _lora_slots_as_inputs(folder: Path) -> None:
    """Turn the baked LoRA weights into graph inputs with zero defaults and a symbolic rank: without an adapter
    the model is the SFT model; an adapter of any rank overrides them per generator. Then gate every LoRA branch
    by the per-row scale, so rows of one generator can run with and without the adapter."""
    import onnx

    path = folder / "model.onnx"
    graph_file = onnx.load(str(path), load_external_data=False)
    _gate_lora_rows(graph_file.graph)
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


def _gate_lora_rows(graph) -> None:
    """Multiply each LoRA branch by ROW_SCALE between its two MatMuls (x·A, of the adapter's rank), which leaves the
    graph's pattern of lora_B's MatMul and the Add into the layer as ONNX Runtime fuses it.
    The input has no default: ONNX Runtime GenAI passes a generator's `set_model_input` only to inputs without
    one, so every generator of this graph must set it (worker.py does)."""
    import onnx

    nodes, gated = [], 0
    for node in graph.node:
        nodes.append(node)
        if node.op_type == "MatMul" and "/lora_A/" in node.name:
            output = node.output[0]
            node.output[0] = f"{output}/ungated"
            nodes.append(
                onnx.helper.make_node("Mul", [node.output[0], ROW_SCALE], [output], name=f"{node.name}/RowScale")
            )
            gated += 1
    if not gated:
        raise RuntimeError("the builder made no LoRA branches to gate")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.append(onnx.helper.make_tensor_value_info(ROW_SCALE, onnx.TensorProto.FLOAT, ["lora_rows", 1, 1]))


def lora_slots(model_dir: Path) -> dict | None:
    path = Path(model_dir) / LORA_SLOTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
