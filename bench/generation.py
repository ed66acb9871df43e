"""Three-arm streaming generation vs a plain `model.generate` of the SFT model, in the same process.

    python -m bench.generation [--tokens 128] [--repeats 3] [--json]

Figures per arm: time to first token, tokens/s; the three arms' wall time; and the baseline: one plain greedy
`generate` of the SFT model as transformers loads it (float weights, no adapter, torch's default threads) for the
same number of new tokens. Ratios are against that baseline, measured in turn with each configuration, so they
hold on a noisy machine. Configurations on a CPU, each with half the cores as torch threads unless said: the app's
default (`--precision auto`: base model int8, SFT float), both int8, both float, and both float with torch's
default threads. Also reported: a plain `generate` of the int8 SFT model, and how closely
each int8 model follows its float self (next-token agreement, perplexity of the float model's greedy answer).
A LoRA adapter (the default round settings' shape, random non-zero weights: speed does not depend on the values)
is loaded so the preference arm really runs, and the base arm's answer-boundary stop is off so it runs the full
length unless it emits EOS. The fidelity measures are in bench/fidelity.py.

Runtimes: the app's default (`--runtime auto`: onnx on a CPU) and the torch configurations run in turn; for the
onnx runtime also its next-token agreement with the torch model each arm stands for (teacher forcing on torch's
greedy answers, `--fidelity-prompts` prompts × `--tokens`), the converted adapter's size and conversion time, and
with `--llama-cpp` llama.cpp's single-stream speed on the SFT GGUF, in a child process with its own python
(`--llama-cpp-python`, default `.venv-llama`; bench/llama_cpp_stream.py), against each arm's speed while three stream.
`--runtime vllm` adds the vllm runtime (a vLLM server started from the vLLM environment, or `--vllm-url`; the base
arm on vLLM too with `--base-vllm-url`, else on the local runtime) and its hot swap; `--configs app,vllm` measures
only those configurations.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

PROMPT = "Write a long, detailed story about a dragon who learns to bake bread."


def plain_generate(loaded, prompt: str, tokens: int) -> float:
    import torch

    from playground.prompting import chat_prompt
    from playground.runtimes import neutral

    inputs = loaded.tokenizer(chat_prompt(loaded.tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        loaded.model.generate(
            **inputs,
            **neutral.TRANSFORMERS | {"min_new_tokens": tokens},  # the app's decoding, every answer full length
            max_new_tokens=tokens,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
    return time.perf_counter() - start


def three_arms_once(engine, sampling) -> tuple[float, dict]:
    """Wall time of the app's streamed three arms, and per arm: ttft, tokens/s, tokens."""
    start = time.perf_counter()
    answers = engine.generate(PROMPT, sampling)
    wall = time.perf_counter() - start
    return wall, {
        arm: {"ttft": a.ttft, "tok_s": a.tokens_per_second, "tokens": a.new_tokens} for arm, a in answers.items()
    }


def naive_sequential(engine, sampling) -> float:
    """The three arms one after another, one row each (no batching, no concurrency)."""
    start = time.perf_counter()
    for arm in ("base", "sft", "pref"):
        engine.generate(PROMPT, sampling, arms=(arm,))
    return time.perf_counter() - start


def llama_cpp_python(given: str | None) -> str | None:
    """The python that has llama-cpp-python: `--llama-cpp-python`, else the repository's .venv-llama, else this one
    if it can import it (None: none found)."""
    import importlib.util
    import sys

    if given:
        return given
    local = Path(__file__).resolve().parent.parent / ".venv-llama" / "bin" / "python"
    if local.is_file():
        return str(local)
    return sys.executable if importlib.util.find_spec("llama_cpp") is not None else None


def llama_cpp_single_stream(python: str, gguf: str, prompt: str, tokens: int, threads: int, raw=False) -> dict:
    """llama.cpp's decode speed on the same GGUF file, in a child process (bench/llama_cpp_stream.py says why).
    raw: a plain completion that ignores the end of text (a base model has no chat template)."""
    import json
    import subprocess

    script = Path(__file__).resolve().parent / "llama_cpp_stream.py"
    command = [python, str(script), gguf, "--tokens", str(tokens), "--threads", str(threads), "--prompt", prompt]
    command += ["--raw"] if raw else []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 600 s"}
    if done.returncode != 0:
        from playground.processes import last_words

        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit code {done.returncode}"
        last = last_words(done.stderr)
        return {"error": f"llama.cpp's process ended with {how}" + (f": {last}" if last else "")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    import torch

    from bench.common import lora_adapter, report
    from bench.fidelity import FIDELITY_PROMPTS, int8_fidelity, onnx_fidelity
    from playground import runtimes as serving_runtime
    from playground.generation import Engine
    from playground.models import load_model, model_folder, resolve_preset
    from playground.runtimes.vllm.server import VllmOptions
    from playground.settings import ModelSettings, RoundSettings, Sampling, half_the_cores

    preset = resolve_preset(args.preset)
    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    cpu = args.device == "cpu"
    torch_default_threads = torch.get_num_threads()
    # The serving configurations measured, each against the same plain baseline, interleaved so drift on a
    # shared machine lands on all of them alike. The first is the app's default: (runtime, precision, threads).
    configs = {"app": (serving_runtime.resolve("auto", args.device), "auto", None)}
    if cpu:
        configs["torch"] = ("torch", "auto", None)  # the default before the onnx runtime
        configs["torch_int8_weights"] = ("torch", "int8", None)
        configs["torch_float_weights"] = ("torch", "float", None)
        if serving_runtime.onnx_installed():
            # The SFT model's fp32 copy beside the int8 base model: the app default before calibration chose int4.
            configs["onnx_sft_fp32"] = ("onnx", "int8", None)
            configs["onnx_two_chat_workers"] = ("onnx", "auto", None, 2)
            configs["onnx_all_cores_per_worker"] = ("onnx", "auto", os.cpu_count())
    if args.runtime == "vllm":
        configs["vllm"] = ("vllm", "auto", None)  # the base arm as the app default: int8 on the onnx runtime
    if args.configs:
        wanted = args.configs.split(",")
        configs = {name: config for name, config in configs.items() if name in wanted}
    vllm = VllmOptions(url=args.vllm_url, base_url=args.base_vllm_url)
    swaps = {}
    adapter_dir = tempfile.mkdtemp(prefix="bench-adapter-")
    lora_adapter(model_folder(preset.sft, data_dir, trust_remote_code=False), adapter_dir, b_std=0.01)
    built = {}  # one engine per (runtime, precision[, worker threads]): torch threads are set per call
    engines = {}
    for name, (runtime, precision, threads, *chat_workers) in configs.items():
        chat_workers = chat_workers[0] if chat_workers else ModelSettings().chat_workers
        key = (runtime, precision, threads if runtime == "onnx" else None, chat_workers)
        if key not in built:
            start = time.perf_counter()
            engine = Engine.from_preset(
                preset,
                data_dir,
                device=args.device,
                precision=precision,
                runtime=runtime,
                threads=threads if runtime == "onnx" else None,
                chat_workers=chat_workers,
                vllm=vllm,
            )
            loaded_s = time.perf_counter() - start
            engine.base_stops = ()
            start = time.perf_counter()
            engine.use_adapter(1, adapter_dir)
            swaps[name] = {"start_s": round(loaded_s, 1), "first_adapter_s": round(time.perf_counter() - start, 3)}
            built[key] = engine
        engines[name] = built[key]
    # The baseline: the SFT model as transformers loads it, no adapter, torch's default threads.
    plain = load_model(preset.sft, data_dir, "sft", device=args.device)
    plain_int8 = (
        load_model(preset.sft, data_dir, "sft", int8=True, keep_float=tuple(RoundSettings().target_modules))
        if cpu
        else None
    )

    def threads_for(name):
        runtime, _, threads, *_ = configs[name]
        if runtime == "onnx":
            return threads or half_the_cores()
        return threads or (half_the_cores() if cpu else torch_default_threads)

    sampling = Sampling(temperature=0, max_new_tokens=args.tokens, seed=0)
    for name, engine in engines.items():  # warm-up
        torch.set_num_threads(threads_for(name))
        engine.generate(PROMPT, Sampling(temperature=0, max_new_tokens=8, seed=0))
    torch.set_num_threads(torch_default_threads)
    plain_generate(plain, PROMPT, 8)

    walls = {name: [] for name in engines}
    arms = {name: {a: {"ttft": [], "tok_s": [], "tokens": []} for a in ("base", "sft", "pref")} for name in engines}
    baseline, baseline_int8 = [], []
    for _ in range(args.repeats):
        torch.set_num_threads(torch_default_threads)
        baseline.append(plain_generate(plain, PROMPT, args.tokens))
        if plain_int8 is not None:
            baseline_int8.append(plain_generate(plain_int8, PROMPT, args.tokens))
        for name, engine in engines.items():
            torch.set_num_threads(threads_for(name))
            wall, per_arm = three_arms_once(engine, sampling)
            walls[name].append(wall)
            for arm, stats in per_arm.items():
                for key, value in stats.items():
                    arms[name][arm][key].append(value)
    first = next(iter(engines))
    torch.set_num_threads(threads_for(first))
    naive = naive_sequential(engines[first], sampling)

    base_s = statistics.median(baseline)
    figures = {
        "baseline_plain_generate_sft_float_s": round(base_s, 2),
        "baseline_plain_generate_sft_float_tokens_per_s": round((args.tokens - 1) / base_s, 2),
    }
    if baseline_int8:
        figures["plain_generate_sft_int8_s"] = round(statistics.median(baseline_int8), 2)
    for name, engine in engines.items():
        wall = statistics.median(walls[name])
        prefix = "" if name == "app" else f"{name}."
        figures[f"{prefix}runtime"] = engine.runtime
        figures[f"{prefix}three_arms_wall_s"] = round(wall, 2)
        figures[f"{prefix}ratio_three_arms_to_one_plain"] = round(wall / base_s, 2)
        if name == "app" and baseline_int8:
            figures["ratio_three_arms_to_one_plain_int8"] = round(wall / statistics.median(baseline_int8), 2)
        for arm, stats in arms[name].items():
            figures[f"{prefix}{arm}_ttft_s"] = round(statistics.median(stats["ttft"]), 3)
            figures[f"{prefix}{arm}_tokens_per_s"] = round(statistics.median(stats["tok_s"]), 2)
            figures[f"{prefix}{arm}_new_tokens"] = int(statistics.median(stats["tokens"]))
        figures[f"{prefix}precision"] = f"base {engine.base.precision}, sft {engine.sft.precision}"
        figures[f"{prefix}precisions"] = engine.precisions()
        figures[f"{prefix}threads"] = threads_for(name)
        figures[f"{prefix}runtimes"] = engine.describe()
        if name in swaps:
            figures[f"{prefix}start_s"] = swaps[name]["start_s"]
            figures[f"{prefix}first_adapter_load_s"] = swaps[name]["first_adapter_s"]
            start = time.perf_counter()
            engine.use_adapter(3, adapter_dir)  # the hot swap: load the next version, unload the previous
            figures[f"{prefix}hot_swap_s"] = round(time.perf_counter() - start, 3)
    figures["naive_three_arms_sequential_s"] = round(naive, 2)
    figures["ratio_naive_to_one_plain"] = round(naive / base_s, 2)
    onnx_engine = engines["app"] if "app" in engines and engines["app"].runtime == "onnx" else None
    if onnx_engine is not None and args.fidelity_prompts:
        from peft import PeftModel

        prompts = FIDELITY_PROMPTS[: args.fidelity_prompts]
        torch_base = load_model(preset.base, data_dir, "base", device=args.device)
        torch_pref = PeftModel.from_pretrained(load_model(preset.sft, data_dir, "sft").model, adapter_dir).eval()
        torch.set_num_threads(torch_default_threads)
        figures["onnx_fidelity"] = onnx_fidelity(
            onnx_engine, plain.model, torch_pref, torch_base.model, prompts, args.tokens
        )
        figures["fidelity"] = {arm: f["next_token_agreement"] for arm, f in figures["onnx_fidelity"].items()}
        from playground.runtimes.onnx import adapters as onnx_adapters

        figures["onnx_adapter_disk_bytes"] = os.path.getsize(Path(adapter_dir) / onnx_adapters.ADAPTER_FILE)
        figures["peft_adapter_disk_bytes"] = os.path.getsize(Path(adapter_dir) / "adapter_model.safetensors")
        start = time.perf_counter()
        onnx_adapters.convert_adapter(adapter_dir)
        figures["onnx_adapter_convert_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        onnx_engine.use_adapter(2, adapter_dir)
        figures["onnx_hot_swap_s"] = round(time.perf_counter() - start, 3)
    if args.llama_cpp:
        python = llama_cpp_python(args.llama_cpp_python)
        if python is None:
            figures["llama_cpp"] = (
                "not installed: python -m venv .venv-llama && CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON' "
                ".venv-llama/bin/pip install llama-cpp-python"
            )
        else:
            from playground.models import EMBEDDED

            # Each arm against llama.cpp on its own model's GGUF: the SFT and preference arms the SFT file (chat),
            # the base arm the base file (plain completion, end of text ignored like the bench's base arm).
            scratch = Path(tempfile.mkdtemp())
            ggufs = {
                "sft": (str(EMBEDDED["smollm2-135m-instruct"].gguf_path(scratch)), False),
                "base": (str(EMBEDDED["gemma-3-270m"].gguf_path(scratch)), True),
            }
            for role, (gguf, raw) in ggufs.items():
                single = llama_cpp_single_stream(python, gguf, PROMPT, args.tokens, os.cpu_count(), raw=raw)
                figures[f"llama_cpp_{role}_single_stream"] = single
                if "tokens_per_s" in single and "app" in engines:
                    for arm in ("base",) if role == "base" else ("sft", "pref"):
                        ratio = figures[f"{arm}_tokens_per_s"] / single["tokens_per_s"]
                        figures[f"ratio_{arm}_arm_to_llama_cpp"] = round(ratio, 2)
    if plain_int8 is not None and {"torch_float_weights", "torch_int8_weights"} <= set(engines):
        figures["int8_fidelity_sft"] = int8_fidelity(plain, plain_int8, PROMPT, args.tokens, chat=True)
        figures["int8_fidelity_base"] = int8_fidelity(
            engines["torch_float_weights"].base, engines["torch_int8_weights"].base, PROMPT, args.tokens, chat=False
        )
    for engine in built.values():
        engine.close()
    from playground.runtimes.onnx.calibration import cpu_identity

    figures["cpu"] = cpu_identity()
    settings = {
        "preset": preset.name,
        "prompt": PROMPT,
        "max_new_tokens": args.tokens,
        "repeats": args.repeats,
        "decoding": "greedy",
        "adapter_version": 1,
        "device": args.device,
        "baseline_threads": torch_default_threads,
    }
    return report("generate", settings, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--fidelity-prompts",
        type=int,
        default=20,
        help="prompts for the onnx runtime's next-token agreement with torch (0: skip)",
    )
    parser.add_argument(
        "--llama-cpp",
        action="store_true",
        help="also time llama.cpp's single stream on the SFT GGUF, in a child process (llama_cpp_stream.py)",
    )
    parser.add_argument(
        "--llama-cpp-python",
        default=None,
        help="the python with llama-cpp-python (default: .venv-llama/bin/python, else this one if it has it)",
    )
    parser.add_argument(
        "--runtime",
        choices=("vllm",),
        default=None,
        help="also measure this runtime against the app's default in the same run",
    )
    parser.add_argument(
        "--vllm-url", default=None, help="a running vLLM server for the SFT model (else one is started)"
    )
    parser.add_argument("--base-vllm-url", default=None, help="a vLLM server for the base model")
    parser.add_argument("--configs", default=None, help="only these configurations, e.g. app,vllm")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
