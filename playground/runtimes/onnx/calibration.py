"""Which ONNX copy serves the SFT model on this CPU, decided by measuring once and kept with the model cache.

The same code ran three columns at 0.66x one plain generate on an AMD EPYC and 1.37x on an Intel Xeon: what is fast
depends on the CPU's kernels (AVX2, AVX-512 VNNI, AMX) and memory, so `--precision auto` does not guess. On the first
start with a model on a CPU, `calibrate` builds the candidates (the fp32 copy, exact today, and the int4 copy,
quantize.py), then a child process (`worker calibrate`, so a kernel that crashes takes only it) times each one
decoding the SFT and preference rows as one batch, with 1 thread and with its share of the cores (half: the base
model decodes on the other half; more threads per process can lose to spinning, issue 22), and checks each
against the fp32 copy by teacher forcing (the fp32 copy gives torch fp32's next tokens: docs/performance.md). The
fastest candidate (copy and thread count) whose next-token agreement is not significantly below FIDELITY_BOUND
serves. The choice is stored
in `<data dir>/models/calibration.json`, keyed by the CPU's model and instruction-set flags and by the model's copy,
so a machine of another kind measures again and a restart does not. `--precision float|int4` skip it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from ...processes import child_env, last_words
from .. import RuntimeUnavailable

log = logging.getLogger(__name__)

FILE = "calibration.json"
CANDIDATES = ("int4", "fp32")  # the reference (fp32) is measured first whatever the order here
FIDELITY_BOUND = 0.95  # next-token agreement with torch fp32 (the bound for the SFT and preference rows)
PROMPTS = ("Why is the sky blue?", "Write a haiku about rain.", "Give me three tips for sleeping better.")
AGREEMENT_TOKENS = 32  # per prompt: 96 positions, a standard error near 0.02 at 0.95
SPEED_TOKENS = 32
# The instruction sets that change which kernels ONNX Runtime and torch run (the rest of /proc/cpuinfo's flags
# changes with kernels and hypervisors without changing a figure).
KERNEL_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip


def cpu_identity() -> dict:
    """{"model", "flags"}: the CPU's model name and the kernel-relevant instruction sets it has."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass  # not Linux: the model from platform, no flags
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.machine()
    return {"model": model, "flags": [flag for flag in KERNEL_FLAGS if flag in flags]}


def cpu_key(cpu: dict | None = None) -> str:
    cpu = cpu or cpu_identity()
    return f"{cpu['model']} | {' '.join(cpu['flags'])} | {os.cpu_count()} cores"


def recorded(models_dir: Path) -> dict:
    """Every choice kept in this model cache: {cpu key: {model copy: record}}."""
    path = Path(models_dir) / FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def choice_for(models_dir: Path, model_key: str) -> dict | None:
    return recorded(models_dir).get(cpu_key(), {}).get(model_key)


def _keep(models_dir: Path, model_key: str, record: dict) -> None:
    everything = recorded(models_dir)
    everything.setdefault(cpu_key(), {})[model_key] = record
    path = Path(models_dir) / FILE
    partial = path.with_name(f".{FILE}.{os.getpid()}.partial")
    partial.write_text(json.dumps(everything, indent=1))
    os.replace(partial, path)


def calibrated_precision(source: str, models_dir: Path, slots: tuple[str, ...], threads: int, prompt_ids) -> dict:
    """The record of the SFT copy to serve on this CPU ({"precision", "threads", "why", ...}), measured now if this
    CPU and model have none. threads: the most a decode process may use (half the cores); prompt_ids: () -> token
    ids of the calibration prompts (the chat template applied)."""
    from .build import built_dir, local_folder, prepare_model

    folder = local_folder(source)
    model_key = built_dir(models_dir, folder, "fp32", slots).name
    known = choice_for(models_dir, model_key)
    if known:
        return known
    start = time.perf_counter()
    folders = {precision: prepare_model(source, models_dir, precision, slots) for precision in ("fp32", *CANDIDATES)}
    built_s = time.perf_counter() - start
    layouts = sorted({1, threads})
    measured = _run_measure([str(folders["fp32"])] + [str(folders[p]) for p in CANDIDATES if p != "fp32"], layouts,
                            prompt_ids())  # fmt: skip
    by_precision = {}
    for precision, folder in folders.items():
        figures = measured[str(folder)]
        speeds = {int(t): speed for t, speed in figures.pop("tokens_per_s_by_threads").items()}
        fastest = max(speeds, key=speeds.get)
        by_precision[precision] = figures | {"tokens_per_s": speeds[fastest], "threads": fastest, "by_threads": speeds}
    record = decide(by_precision)
    record |= {
        "cpu": cpu_identity(),
        "threads": by_precision[record["precision"]]["threads"],
        "build_s": round(built_s, 1),
        "measure_s": round(time.perf_counter() - start - built_s, 1),
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    _keep(models_dir, model_key, record)
    log.info("Calibrated on this CPU: the SFT model serves in %s (%s).", record["precision"], record["why"])
    return record


def decide(measured: dict) -> dict:
    """The fastest candidate whose agreement with fp32 is not significantly below the bound (2 standard errors);
    fp32 is the reference and always qualifies."""
    qualified = {}
    for precision, figures in measured.items():
        n = max(figures.get("positions", 0), 1)
        p = figures.get("agreement", 1.0)
        se = math.sqrt(max(p * (1 - p), 1 / n) / n)
        figures["agreement_se"] = round(se, 4)
        if precision == "fp32" or p + 2 * se >= FIDELITY_BOUND:
            qualified[precision] = figures["tokens_per_s"]
    best = max(qualified, key=qualified.get)
    others = ", ".join(
        f"{p} {f['tokens_per_s']:.0f} tok/s" + ("" if p in qualified else f" (agreement {f['agreement']:.3f}: too low)")
        for p, f in measured.items()
        if p != best
    )
    agreement = measured[best].get("agreement", 1.0)
    threads = measured[best].get("threads")
    layout = f" with {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    why = (
        f"fastest here: {measured[best]['tokens_per_s']:.0f} tok/s{layout} for the SFT and preference rows against "
        f"{others}; next-token agreement with fp32 {agreement:.3f}"
    )
    return {"precision": best, "why": why, "measured": measured}


def _run_measure(folders: list[str], layouts: list[int], prompts: list[list[int]]) -> dict:
    command = [
        sys.executable,
        "-m",
        "playground.runtimes.onnx.worker",
        "calibrate",
        *folders,
        "--threads",
        ",".join(str(t) for t in layouts),
    ]
    request = json.dumps({"prompts": prompts, "agreement_tokens": AGREEMENT_TOKENS, "speed_tokens": SPEED_TOKENS})
    done = subprocess.run(command, input=request, capture_output=True, text=True, env=child_env(), timeout=600)
    if done.returncode != 0:
        raise RuntimeUnavailable(
            f"measuring the ONNX copies on this CPU failed ({last_words(done.stderr) or done.returncode})."
            " Fix: --precision float (or int4) skips the measurement."
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the child process (`worker calibrate`): ONNX Runtime GenAI and numpy only -----------------------------
def measure(folders: list[str], layouts: list[int], request: dict) -> dict:
    """Per folder: tokens/s of a two-row batch (one row gated on, one off, as the SFT and preference answers
    decode) with each thread count in `layouts`, and the share of next tokens equal to the first folder's greedy
    choice after the same prefixes."""
    import numpy as np
    import onnxruntime_genai as og

    results, references = {}, None
    prompts = request["prompts"]
    for folder in folders:
        speeds = {}
        for threads in layouts:
            config = og.Config(folder)
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
            model = _Model(og.Model(config), folder, og, np)
            made, scales = model.generator(2, prompts[0])
            for _ in range(4):  # warm-up
                made.generate_next_token()
            start = time.perf_counter()
            for _ in range(request["speed_tokens"]):
                made.generate_next_token()
            speeds[threads] = round(2 * request["speed_tokens"] / (time.perf_counter() - start), 1)
            del made, scales
        results[folder] = {"tokens_per_s_by_threads": speeds}
        if references is None:  # the reference's own greedy answers
            references = [(prefix, model.greedy(prefix, request["agreement_tokens"])) for prefix in prompts]
            continue
        agree = total = 0
        for prefix, answer in references:
            agree += model.agreeing(prefix, answer)
            total += len(answer)
        results[folder] |= {"agreement": round(agree / total, 4), "positions": total}
    return results


class _Model:
    def __init__(self, model, folder: str, og, np):
        from .build import lora_slots

        self.model, self.og, self.np = model, og, np
        self.gated = lora_slots(Path(folder)) is not None

    def generator(self, rows: int, prefix: list[int]):
        """A generator over `rows` copies of `prefix`, odd rows gated on; the caller keeps the scales as long as
        the generator (worker.gate_rows says why)."""
        from .build import ROW_SCALE

        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=1024, batch_size=rows)
        made = self.og.Generator(self.model, params)
        scales = self.np.asarray([float(i % 2) for i in range(rows)], dtype=self.np.float32).reshape(-1, 1, 1)
        if self.gated:
            made.set_model_input(ROW_SCALE, scales)
        made.append_tokens(self.np.asarray([prefix] * rows, dtype=self.np.int32))
        return made, scales

    def greedy(self, prefix: list[int], tokens: int) -> list[int]:
        made, scales = self.generator(1, prefix)
        answer = []
        for _ in range(tokens):
            made.generate_next_token()
            answer.append(int(made.get_next_tokens()[0]))
        del made, scales
        return answer

    def agreeing(self, prefix: list[int], answer: list[int]) -> int:
        """Teacher forcing on `answer`: how many of its tokens are this model's greedy choice after the tokens
        before them."""
        made, scales = self.generator(1, prefix)
        agree = 0
        for token in answer:
            agree += int(self.np.asarray(made.get_logits())[0, -1].argmax() == token)
            made.append_tokens(self.np.asarray([[token]], dtype=self.np.int32))
        del made, scales
        return agree
