"""Opening the models on a runtime: which runtime serves which model, with what weights.

- `torch`: both models' weights in this process (int8 where `int8` names the role, int8.int8_roles).
- `onnx`: ONNX copies in worker processes; here only tokenizers and configs (the SFT weights load for scoring). The
  SFT copy is fp32 or int4: `--precision auto` takes what calibrating this CPU chose (onnx/calibration.py).
- `vllm`: the SFT model (both chat arms) from a vLLM server (started here without a URL); the base model from
  its own vLLM server with `base_url`, else on the local runtime `auto` picks (onnx on a CPU).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..models import LoadedModel, Preset, load_model, model_folder, models_dir
from ..settings import RoundSettings, half_the_cores
from . import ModelRuntime, resolve
from .zero_adapter import zero_adapter

log = logging.getLogger(__name__)


@dataclass
class Opened:
    base: LoadedModel
    sft: LoadedModel
    runtimes: dict[str, ModelRuntime]
    load_sft_weights: object = None  # () -> the SFT model's torch weights, when no torch runtime holds them
    # role -> () -> (LoadedModel, ModelRuntime): the runtime that takes over from a stand-in once it is ready (the
    # base model's ONNX copy on a first start, see _local); the Engine swaps it in.
    later: dict = field(default_factory=dict)


def open_runtimes(
    preset: Preset,
    data_dir,
    *,
    trust_remote_code=False,
    device="cpu",
    int8: set[str] = frozenset(),
    precision: str = "auto",
    threads: int | None = None,
    adapter_targets: tuple[str, ...] | None = None,
    runtime="torch",
    chat_workers: int = 1,
    vllm=None,
    serve_while_building: bool = False,
) -> Opened:
    """threads: torch threads on a CPU (process-wide: torch has no per-model setting), or each onnx decode
    process's; by default half the cores, because the base model and the SFT rows decode at the same time, each
    bound by per-token overhead rather than arithmetic (docs/performance.md, "Thread allocation").
    adapter_targets: the layers LoRA adapters attach to (default: the trainer's); they stay float in an int8 SFT
    model and are the onnx SFT model's LoRA slots. serve_while_building: on a first start the base model serves
    with torch while its ONNX copy builds (the server wants its first answers soon; a command can wait)."""
    threads_given = threads is not None  # --serve-threads: else the calibration may pick the SFT process's
    threads = threads or half_the_cores()
    if device == "cpu":
        import torch

        torch.set_num_threads(threads)
    targets = tuple(adapter_targets or RoundSettings().target_modules)
    local = dict(
        data_dir=data_dir,
        trust_remote_code=trust_remote_code,
        device=device,
        int8=int8,
        precision=precision,
        threads=threads,
        threads_given=threads_given,
        targets=targets,
        chat_workers=chat_workers,
        later={} if serve_while_building else None,
    )
    if "sft" in int8 and runtime in ("onnx", "vllm"):
        # The builder's int8 would quantize the LoRA slots too, and int8 SFT weights followed the float model on
        # fewer next tokens (docs/performance.md): the SFT model stays float on this runtime.
        log.warning("--precision int8: the %s runtime keeps the SFT model in float.", runtime)
    opened: dict[str, tuple[LoadedModel, ModelRuntime]] = {}
    try:
        if runtime == "vllm":
            from .vllm.server import VllmOptions

            options = vllm or VllmOptions()
            opened["sft"] = _vllm("sft", preset.sft, options.url, options, **local)
            if options.base_url:
                opened["base"] = _vllm("base", preset.base, options.base_url, options, **local)
            else:
                opened["base"] = _local("base", preset.base, resolve("auto", device), **local)
        else:
            _open_both(opened, preset, runtime, local)
    except BaseException:
        for _, runtime_ in opened.values():
            runtime_.close()
        raise
    later = local.pop("later") or {}
    runtimes = {role: pair[1] for role, pair in opened.items()}
    load_sft_weights = None
    if runtimes["sft"].name != "torch":

        def load_sft_weights():
            return load_model(preset.sft, data_dir, "sft", trust_remote_code=trust_remote_code, device=device).model

    return Opened(opened["base"][0], opened["sft"][0], runtimes, load_sft_weights, later)


def _open_both(opened: dict, preset: Preset, runtime: str, local: dict) -> None:
    """Both models at once, each in its own thread: on a first start each converts (a child process) and, on the
    onnx runtime, builds its ONNX copy (another) while the other does the same, one core each, instead of one after
    the other. The torch runtime loads its weights here one model after the other, once both are converted. A
    failure is raised once both have ended (the caller closes what opened)."""
    from concurrent.futures import ThreadPoolExecutor

    roles = (("base", preset.base), ("sft", preset.sft))
    if runtime == "onnx":
        work = {role: (_local, role, spec, runtime) for role, spec in roles}
    else:
        trust = local["trust_remote_code"]
        work = {role: (model_folder, spec, Path(local["data_dir"]), trust) for role, spec in roles}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="open-model") as pool:
        futures = {role: pool.submit(*call, **(local if call[0] is _local else {})) for role, call in work.items()}
    errors = []
    for role, future in futures.items():
        try:
            result = future.result()
            if runtime == "onnx":
                opened[role] = result
        except BaseException as error:
            if runtime == "onnx":
                errors.append(error)
            # else: load_model below meets the same problem and explains it
    if errors:
        raise errors[0]
    if runtime != "onnx":
        for role, spec in roles:
            opened[role] = _local(role, spec, runtime, **local)


def _local(
    role,
    spec,
    runtime,
    *,
    data_dir,
    trust_remote_code,
    device,
    int8,
    precision,
    threads,
    threads_given,
    targets,
    chat_workers,
    later,
):
    """One model on the torch or onnx runtime. On a first start the base model's ONNX copy (an int8 build of tens of
    seconds) is not in the way of the first answers: the base model serves from its torch weights meanwhile, and
    the copy is built after (`later`), to take over when it is ready."""
    slots = targets if role == "sft" else ()
    options = dict(
        data_dir=data_dir, trust_remote_code=trust_remote_code, device=device, int8=int8, precision=precision,
        threads=threads, threads_given=threads_given,
    )  # fmt: skip
    if runtime == "onnx":
        if role == "base" and later is not None and not _onnx_copy_built(spec, slots, **options):
            later[role] = lambda: _onnx(role, spec, slots, chat_workers, **options)
            log.info("The base model serves with torch until its ONNX copy is built (once, in the background).")
            return _torch(role, spec, slots, **(options | {"int8": frozenset(), "precision": "auto"}))
        return _onnx(role, spec, slots, chat_workers, **options)
    return _torch(role, spec, slots, **options)


def _onnx_precision(role: str, int8) -> str:
    return "int8" if role == "base" and role in int8 else "fp32"


def _onnx_copy_built(spec, slots, *, data_dir, trust_remote_code, int8, **_) -> bool:
    from .onnx.build import built_dir, local_folder

    try:
        folder = local_folder(model_folder(spec, Path(data_dir), trust_remote_code))
    except Exception:  # not here yet, or not loadable: load_model (the torch path) fetches it or explains why
        return False
    return (
        built_dir(models_dir(data_dir), folder, _onnx_precision("base", int8), slots) / "genai_config.json"
    ).is_file()


def _onnx(
    role, spec, slots, chat_workers, *, data_dir, trust_remote_code, int8, precision, threads, threads_given, **_
):
    from .onnx.client import OnnxRuntime

    loaded = load_model(spec, data_dir, role, trust_remote_code=trust_remote_code, weights=False)
    if role == "sft":
        chosen, why, calibrated_threads = _sft_precision(precision, loaded, slots, threads, data_dir)
        threads = threads if threads_given else calibrated_threads or threads
    else:
        chosen, why = _onnx_precision(role, int8), None
    served = OnnxRuntime.open(
        loaded.source, models_dir(data_dir), chosen, slots, threads, chat_workers if role == "sft" else 1, role
    )
    served.precision, served.precision_why = chosen, why
    loaded.precision = {"fp32": "float32"}.get(chosen, chosen)
    return loaded, served


def _sft_precision(precision: str, loaded: LoadedModel, slots, threads: int, data_dir) -> tuple[str, str, int | None]:
    """The SFT model's ONNX copy, why, and the threads its process runs (None: the default): `float`/`int8` fp32
    (exact), `int4` as asked, `auto` what calibrating this CPU chose (measured now on the first start here)."""
    if precision == "int4":
        return "int4", "--precision int4", None
    if precision != "auto":
        return "fp32", f"--precision {precision}", None
    from ..prompting import chat_prompt
    from .onnx.calibration import calibrated_precision

    def prompt_ids():
        from .onnx.calibration import PROMPTS

        tokenizer = loaded.tokenizer
        return [tokenizer(chat_prompt(tokenizer, p), add_special_tokens=False).input_ids for p in PROMPTS]

    record = calibrated_precision(loaded.source, models_dir(data_dir), slots, threads, prompt_ids)
    return record["precision"], f"calibrated on this CPU ({record['at']}): {record['why']}", record.get("threads")


def _torch(role, spec, slots, *, data_dir, trust_remote_code, device, int8, precision="auto", **_):
    from ..int8 import PrecisionError
    from .torch_runtime import TorchRuntime

    if precision == "int4":
        raise PrecisionError("--precision int4 needs the onnx runtime. Fix: --runtime onnx (or auto on a CPU).")
    loaded = load_model(
        spec, data_dir, role, trust_remote_code=trust_remote_code, device=device, int8=role in int8, keep_float=slots
    )
    return loaded, TorchRuntime(loaded)


def _vllm(role, spec, url, options, *, data_dir, trust_remote_code, device, targets, **_):
    """One model from a vLLM server: `url`, else one started here on the model's local folder. The SFT model's
    rows without an adapter run with a zero adapter (vllm/client.py says why)."""
    from .vllm.client import VllmRuntime
    from .vllm.server import VllmServer, find_python

    loaded = load_model(spec, data_dir, role, trust_remote_code=trust_remote_code, weights=False)
    label = "base" if role == "base" else "SFT"
    plain = None
    if role == "sft":
        name = Path(loaded.source).name if Path(loaded.source).is_dir() else loaded.source.replace("/", "--")
        plain = str(
            zero_adapter(
                loaded.source,
                targets,
                models_dir(data_dir) / f"{name}-zero-lora-{'-'.join(targets)}",
                trust_remote_code=trust_remote_code,
            )
        )
    if url:
        return loaded, VllmRuntime(url, label=label, plain_adapter=plain, wait=options.connect_wait)
    log_dir = Path(options.log_dir or data_dir)
    server = VllmServer(
        find_python(options.python),
        loaded.source,
        device=device,
        max_lora_rank=options.max_lora_rank,
        max_model_len=options.max_model_len,
        log_path=log_dir / f"vllm-{role}.log",
        startup_timeout=options.startup_timeout,
    ).start()
    try:
        return loaded, VllmRuntime(server.url, server, label=label, plain_adapter=plain)
    except BaseException:
        server.stop()
        raise
