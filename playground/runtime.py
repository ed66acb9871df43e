"""The `onnx` serving runtime: ONNX Runtime GenAI decodes, each model in its own worker process.

Why (docs/performance.md, "Serving runtime"): on a CPU, `transformers.generate` is bound by per-token framework
overhead, and ONNX Runtime GenAI runs the same fp32 weights with the same next tokens about 3x faster. Its Python
calls hold the GIL for a whole token step, so two models in one process take turns instead of running at once;
one process per model lets the base model and the SFT model decode in parallel and keeps the web server responsive.

- **Build once** (`prepare_model`): a transformers folder → an ONNX folder under `<data dir>/models`, by
  onnxruntime-genai's model builder in a subprocess (it loads the torch model; the server should not hold that
  memory), atomically, cached by the source, the precision and the LoRA slots. The SFT model is built with
  zero-valued LoRA weights on the layers the trainer adapts, declared as graph inputs of any rank, so one set of
  weights serves both the SFT row (no adapter: the zeros) and the preference row (a version's adapter).
- **Adapters** (`convert_adapter`): PEFT's `adapter_model.safetensors` → `adapter.onnx_adapter` (ONNX Runtime's
  adapter format) beside it; the trainer writes it before publishing a version, the server converts on demand
  (older or restored versions). PEFT's scale (alpha / r) is folded into B.
- **Workers** (`DecodeWorker`): a child process with one model; the parent sends a request, then for each token
  step receives one token per row and answers which rows go on (lockstep: the parent's stop rules, cancels and
  streaming stay in generation.py, the same for both runtimes).

Sampling runs in ONNX Runtime GenAI with one generator (and so one seed) per row: answers are reproducible per
seed, though not the same random draws as the torch runtime's. Greedy answers follow the torch model token for
token (the fidelity rule in docs/performance.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
ADAPTER_FILE = "adapter.onnx_adapter"
LORA_SLOTS_FILE = "lora_slots.json"
SLOT_RANK = "lora_rank"  # the symbolic dimension that lets an adapter of any rank fill a slot


class RuntimeUnavailable(RuntimeError):
    """The onnx runtime cannot serve this model here; the message says why and what to do."""


class AdapterConversionError(RuntimeError):
    """A PEFT adapter that the onnx runtime cannot serve (missing slots, unsupported LoRA variant)."""


def installed() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def resolve(runtime: str, device: str) -> str:
    """`auto`: onnx on a CPU when onnxruntime-genai is installed, else torch (a GPU keeps torch: not measured to
    win there)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime '{runtime}'. Fix: use one of {', '.join(RUNTIMES)}.")
    if runtime == "onnx" and device != "cpu":
        raise ValueError(f"The onnx runtime serves on the CPU only, not on '{device}'. Fix: --runtime torch or auto.")
    if runtime == "onnx" and not installed():
        raise RuntimeUnavailable("The onnx runtime needs onnxruntime-genai. Fix: pip install -r requirements.txt, "
                                 "or --runtime torch.")
    if runtime == "auto":
        return "onnx" if device == "cpu" and installed() else "torch"
    return runtime


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
    command = [sys.executable, "-m", "playground.runtime", "build", folder, str(scratch / "model"),
               "--precision", precision, "--lora-targets", ",".join(lora_targets)]
    log.info("Building the ONNX copy of %s once into %s ...", source, target)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=_child_env())
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
    """Runs in its own process (`python -m playground.runtime build`): the builder loads the torch model."""
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


# ---- workers ----------------------------------------------------------------------------------------------
class WorkerError(RuntimeError):
    """The worker process failed a request or died; the message carries its reason."""


class DecodeWorker:
    """One ONNX model in a child process. One request at a time (callers hold the model's lock)."""

    def __init__(self, model_dir: Path, threads: int, label: str):
        self.model_dir, self.threads, self.label = Path(model_dir), threads, label
        self.slots = lora_slots(self.model_dir)
        self._lock = threading.Lock()
        self.adapters: dict[str, str] = {}  # loaded in the worker: reloaded if it has to be restarted
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        # A plain subprocess with two pipes (not multiprocessing's spawn, which re-runs the parent's main script):
        # it imports only onnxruntime-genai and exits when the parent's end of the pipe closes.
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        command = [sys.executable, "-m", "playground.runtime", "serve", str(self.model_dir),
                   "--threads", str(self.threads), "--fds", f"{from_parent},{to_parent}"]
        self.process = subprocess.Popen(command, pass_fds=(from_parent, to_parent), env=_child_env(),
                                        stdout=subprocess.DEVNULL)
        os.close(from_parent)
        os.close(to_parent)
        self._conn = _Duplex(to_child, from_child)
        self._reply()  # waits for the model to load; raises WorkerError if it cannot

    def _died(self) -> WorkerError:
        code = self.process.wait()
        return WorkerError(f"the {self.label} decode worker exited (code {code}); it starts again with the next request")

    def _reply(self):
        try:
            reply = self._conn.recv()
        except (EOFError, OSError) as error:
            raise self._died() from error
        if reply[0] == "error":
            raise WorkerError(reply[1])
        return reply[1]

    def call(self, *message):
        with self._lock:
            self._alive()
            self._send(message)
            return self._reply()

    def _send(self, message) -> None:
        try:
            self._conn.send(message)
        except OSError as error:
            raise self._died() from error

    def _alive(self) -> None:
        """A worker that died (killed, out of memory) is started again with its adapters before the next request;
        the request that was running when it died failed with WorkerError."""
        if self.process.poll() is None:
            return
        log.warning("The %s decode worker exited (code %s); starting it again.", self.label, self.process.poll())
        self._conn.close()
        self.restarts += 1
        self._start()
        for name, path in self.adapters.items():
            self._send(("load_adapter", name, path))
            self._reply()

    def load_adapter(self, name: str, path: Path) -> None:
        self.call("load_adapter", name, str(path))
        self.adapters[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        self.call("unload_adapter", name)
        self.adapters.pop(name, None)

    def generate(self, prompt_ids: list[int], rows: list[tuple[int, str | None]], sampling, max_new_tokens: int):
        """Yield, per token step, one token id per row (None for a row that has stopped); send back which rows
        stop (a list of indexes) or True to cancel, with `.send()`. rows: (seed, adapter name or None)."""
        with self._lock:
            self._alive()
            self._send(("generate", list(prompt_ids), rows, sampling.temperature, sampling.top_p,
                             sampling.greedy, max_new_tokens))
            try:
                while True:
                    step = self._reply()
                    if step is None:  # every row is done
                        return
                    stop = yield step
                    self._send(("next", stop if stop is not None else []))
            except GeneratorExit:
                # The caller went away mid-answer: end the request so the worker is free for the next one.
                try:
                    self._conn.send(("next", True))
                    while self._reply() is not None:
                        self._conn.send(("next", True))
                except (OSError, WorkerError):
                    pass  # it died meanwhile; the next request starts it again
                raise

    def next_tokens(self, ids: list[int], start: int, adapter: str | None = None) -> list[int]:
        """The greedy next token after each prefix ids[:k] for k = start..len(ids)-1 (teacher forcing)."""
        return self.call("next_tokens", list(ids), start, adapter)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                with self._lock:
                    self._conn.send(("close",))
            except OSError:
                pass
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._conn.close()


class _Duplex:
    """One Connection per direction over two pipes, used like a duplex multiprocessing Connection."""

    def __init__(self, write_fd: int, read_fd: int):
        from multiprocessing.connection import Connection

        self._out = Connection(write_fd, readable=False)
        self._in = Connection(read_fd, writable=False)

    def send(self, message) -> None:
        self._out.send(message)

    def recv(self):
        return self._in.recv()

    def close(self) -> None:
        self._out.close()
        self._in.close()


def _child_env() -> dict:
    """The environment of a child `python -m playground.runtime`: this package importable from anywhere."""
    package_root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"TQDM_DISABLE": "1", "PYTHONPATH": path}


def _serve(conn, model_dir: str, threads: int) -> None:
    """The worker's loop (child process): load the model, then answer requests until told to close."""
    try:
        import numpy as np
        import onnxruntime_genai as og

        config = og.Config(model_dir)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        model = og.Model(config)
        adapters = og.Adapters(model)
        genai = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]
        context_length = genai.get("context_length") or 2048
        # One token step now, so a graph this build of ONNX Runtime cannot run (a kernel's shape limits) fails the
        # start, where `--runtime auto` can still fall back to torch, not the first answer.
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=min(context_length, 1024), do_sample=False)
        og.Generator(model, params).append_tokens(np.asarray([genai.get("bos_token_id") or 0], dtype=np.int32))
        conn.send(("ok", None))
    except Exception as error:  # the parent reports it; a half-loaded worker is no use
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        kind = message[0]
        try:
            if kind == "close":
                return
            if kind == "load_adapter":
                adapters.load(message[2], message[1])
                conn.send(("ok", None))
            elif kind == "unload_adapter":
                adapters.unload(message[1])
                conn.send(("ok", None))
            elif kind == "next_tokens":
                conn.send(("ok", _next_tokens(model, adapters, context_length, *message[1:], np=np, og=og)))
            elif kind == "generate":
                _generate(conn, model, adapters, context_length, *message[1:], np=np, og=og)
            else:
                conn.send(("error", f"unknown request {kind}"))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


def _next_tokens(model, adapters, context_length, ids, start, adapter, *, np, og) -> list[int]:
    """Teacher forcing: the model's greedy next token after each prefix ids[:k], k = start..len(ids)-1 (how the
    benchmark measures next-token agreement with the torch model)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=min(context_length, max(len(ids) + 1, 1024)), do_sample=False)
    generator = og.Generator(model, params)
    if adapter:
        generator.set_active_adapter(adapters, adapter)
    generator.append_tokens(np.asarray(ids[:start], dtype=np.int32))
    predicted = []
    for k in range(start, len(ids)):
        logits = np.asarray(generator.get_logits())
        predicted.append(int(logits.reshape(-1, logits.shape[-1])[-1].argmax()))  # the guess for ids[k]
        generator.append_tokens(np.asarray([ids[k]], dtype=np.int32))
    return predicted


def _generate(conn, model, adapters, context_length, prompt_ids, rows, temperature, top_p, greedy, max_new_tokens,
              *, np, og) -> None:
    # A sliding-window model (Gemma 3) needs a KV buffer at least as long as its window, whatever the request.
    length = min(context_length, max(len(prompt_ids) + max_new_tokens, 1024))
    generators = []
    for seed, adapter in rows:
        params = og.GeneratorParams(model)
        options = {"max_length": length, "batch_size": 1}
        if greedy:
            options["do_sample"] = False
        else:
            options |= {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
                        "random_seed": seed}
        params.set_search_options(**options)
        generator = og.Generator(model, params)
        if adapter:
            generator.set_active_adapter(adapters, adapter)
        generator.append_tokens(np.asarray(prompt_ids, dtype=np.int32))
        generators.append(generator)
    active = [True] * len(generators)
    for _ in range(max_new_tokens):
        step = []
        for i, generator in enumerate(generators):
            if active[i] and not generator.is_done():
                generator.generate_next_token()
                step.append(int(generator.get_next_tokens()[0]))
            else:
                active[i] = False
                step.append(None)
        if not any(active):
            break
        conn.send(("ok", step))
        reply = conn.recv()
        if reply[1] is True:
            break
        for i in reply[1]:
            active[i] = False
        if not any(active):
            break
    conn.send(("ok", None))


# ---- command line (the build runs here, in its own process) -------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m playground.runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the ONNX copy of a transformers folder")
    build.add_argument("source")
    build.add_argument("out")
    build.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    build.add_argument("--lora-targets", default="")
    serve = sub.add_parser("serve", help="a decode worker (started by DecodeWorker)")
    serve.add_argument("model_dir")
    serve.add_argument("--threads", type=int, default=1)
    serve.add_argument("--fds", required=True, help="read,write: the pipes to the parent")
    args = parser.parse_args(argv)
    if args.command == "build":
        _build(args.source, args.out, args.precision, [t for t in args.lora_targets.split(",") if t])
    else:
        read_fd, write_fd = (int(fd) for fd in args.fds.split(","))
        _serve(_Duplex(write_fd, read_fd), args.model_dir, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
