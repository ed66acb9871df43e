"""What every benchmark prints beside its figures: the machine, the versions, the settings."""

from __future__ import annotations

import json
import os
import threading
import time


def machine() -> dict:
    """cpu: {"model", "flags"}, the CPU's name and the instruction sets that change which kernels run (figures
    compare only within one kind: the same code ran at 0.66x on one and 1.37x on another)."""
    import torch

    from playground.runtimes.onnx.calibration import cpu_identity

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_identity(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def versions() -> dict:
    from importlib.metadata import version

    names = ("torch", "transformers", "peft", "trl", "gradio", "onnxruntime", "onnxruntime-genai")
    return {name: version(name) for name in names}


def report(suite: str, settings: dict, figures: dict, as_json: bool) -> dict:
    result = {"suite": suite, "machine": machine(), "versions": versions(), "settings": settings, "figures": figures}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{suite}: {json.dumps(settings)}")
        for key, value in figures.items():
            print(f"  {key:<40} {value}")
    return result


def start_app(cwd, port: int, data_dir, *options: str, env: dict | None = None):
    """`python app.py` as a user starts it, in the checkout `cwd`, on `port` with its own data directory (quiet:
    the benches read the page, not the log); stop it with `stop_app`."""
    import subprocess
    import sys

    command = [sys.executable, "app.py", "--port", str(port), "--data-dir", str(data_dir), *options]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_app(server) -> None:
    """Stop an `app.py` subprocess as Ctrl-C would (it stops its trainer), or kill it after 30 s."""
    import signal
    import subprocess

    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def lora_adapter(model_dir, out, *, seed: int = 0, init_lora_weights=True, b_std: float = 0.0) -> str:
    """A LoRA adapter in PEFT's format for the model at `model_dir`, shaped as the app's rounds make them (the
    default round settings' rank, scale and layers). PEFT's default init leaves B at zero (an adapter that changes
    nothing); `b_std` draws B from N(0, b_std), `init_lora_weights=False` draws both matrices at random."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from playground.settings import RoundSettings

    settings = RoundSettings()
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            target_modules=list(settings.target_modules),
            init_lora_weights=init_lora_weights,
        ),
    )
    if b_std:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, b_std)
    model.save_pretrained(out)
    return str(out)


PARTS = ("server", "decode_workers", "trainer")


def process_part(command: str) -> str | None:
    """Which part of the app a child process is, by its command line: "vllm" (a vLLM server it started),
    "decode_worker" (an onnx worker process: decoding, or building an ONNX copy on a first start) or "trainer"; None
    for anything else."""
    if "vllm.entrypoints" in command:
        return "vllm"
    if "playground.runtimes" in command:
        return "decode_worker"
    return "trainer" if "train" in command else None


def tree_memory_mb(pid: int | None = None, uss: bool = False) -> dict[str, float]:
    """RSS (and with `uss` USS) in MB of a server process (default: this one), its decode worker processes and its
    trainer, and of their sum. USS beside RSS: RSS also counts pages shared with other processes or backed by files
    (safetensors weights are memory-mapped, and several processes map the SFT model's file), so a sum of RSS
    overstates them. USS reads every mapping of each process: too costly to sample while a round is being timed."""
    import psutil

    root = psutil.Process(pid)
    kinds = ("", "_uss") if uss else ("",)
    memory = {f"{part}{kind}": 0.0 for part in PARTS for kind in kinds}
    for process, part in [(root, "server"), *((child, None) for child in root.children(recursive=True))]:
        try:
            if part is None:
                part = {"decode_worker": "decode_workers", "trainer": "trainer"}.get(
                    process_part(" ".join(process.cmdline()))
                )
            if part is not None:
                info = process.memory_full_info() if uss else process.memory_info()
                memory[part] += info.rss / 2**20
                if uss:
                    memory[f"{part}_uss"] += info.uss / 2**20
        except psutil.Error:  # ended between listing and reading
            pass
    memory["total"] = sum(memory[part] for part in PARTS)
    if uss:
        memory["total_uss"] = sum(memory[f"{part}_uss"] for part in PARTS)
    return memory


class MemorySampler:
    """The peak of each figure of `tree_memory_mb(pid)`, sampled every `interval` seconds until the block ends."""

    def __init__(self, pid: int | None = None, interval: float = 0.25, uss: bool = False):
        self.pid, self.interval, self.uss = pid, interval, uss
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = tree_memory_mb(self.pid, self.uss)
            self.peak = {k: max(v, self.peak.get(k, 0.0)) for k, v in sample.items()}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
