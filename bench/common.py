"""What every benchmark prints beside its figures: the machine, the versions, the settings."""

from __future__ import annotations

import json
import os
import platform
import time


def machine() -> dict:
    import torch

    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as info:
            facts["cpu"] = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return facts


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "peft", "trl", "gradio")}


def report(suite: str, settings: dict, figures: dict, as_json: bool) -> dict:
    result = {"suite": suite, "machine": machine(), "versions": versions(), "settings": settings, "figures": figures}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{suite}: {json.dumps(settings)}")
        for key, value in figures.items():
            print(f"  {key:<40} {value}")
    return result


def stop_app(server) -> None:
    """Stop an `app.py` subprocess as Ctrl-C would (it stops its trainer), or kill it after 30 s."""
    import signal
    import subprocess

    server.send_signal(signal.SIGINT)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
