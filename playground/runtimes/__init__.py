"""Serving runtimes: what decodes the answers of one model, behind one interface (`ModelRuntime`).

- `torch` (torch_runtime.py): transformers `generate` in this process, PEFT's mixed-adapter batches.
- `onnx` (onnx/): ONNX Runtime GenAI in worker processes (the fast path on a CPU: docs/performance.md).
- `vllm` (vllm/): vLLM's OpenAI-compatible server, started here or running elsewhere (GPUs, many users).

A runtime streams token ids for rows that share one prompt (each row its seed and adapter), attaches and detaches
adapter versions by name, and says what it is. Everything all runtimes share (the arms, the conversation fitted to
the context, stop rules, which version an answer records) stays in generation.Engine.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass

from ..errors import UserError
from ..settings import RUNTIMES

__all__ = ["RUNTIMES", "AdapterError", "DecodeRow", "ModelRuntime", "RuntimeUnavailable", "ServingError", "resolve"]


class RuntimeUnavailable(RuntimeError):
    """A runtime cannot serve this model here; the message says why and what to do."""


class AdapterError(RuntimeError):
    """An adapter folder could not be loaded; the previous adapter keeps serving."""


class ServingError(RuntimeError):
    """A serving process or server failed a request or cannot be reached; the message says which and what to do.
    The arms it serves show it in their answer; the other arms keep answering."""


@dataclass(frozen=True)
class DecodeRow:
    """One answer to decode: the seed of its sampling noise and the adapter it runs with (None: the model alone)."""

    seed: int
    adapter: str | None = None


class ModelRuntime:
    """One model being served. `decode` feeds a decoding.RowStreamer (one row per DecodeRow) until every row is
    done or `cancel` is set; the streamer's `finished` flags say which rows to stop."""

    name = "?"
    concurrent = False  # True: requests run at once (a server batches them); False: the Engine runs one at a time
    max_context: int | None = None  # prompt + answer tokens the runtime takes, when less than the model's own
    problem: str | None = None  # the latest serving failure, until a request succeeds again
    precision: str | None = None  # the weights it decodes, where the runtime chose among copies ("fp32", "int4", ...)
    precision_why: str | None = None  # why that copy (asked for, or measured on this CPU)

    def decode(self, ids: list[int], rows: list[DecodeRow], sampling, streamer, cancel: threading.Event) -> None:
        raise NotImplementedError

    def attach(self, name: str, path: str) -> None:
        """Load the adapter in folder `path` under `name`; raise (anything) when it cannot be served."""
        raise NotImplementedError(f"the {self.name} runtime serves no adapters")

    def detach(self, name: str) -> None:
        raise NotImplementedError

    def adapter_hint(self, path: str) -> str:
        """What to do when an adapter does not load, beyond the error itself ("" when nothing to add)."""
        return ""

    def close(self) -> None:
        pass


def onnx_installed() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def resolve(runtime: str, device: str) -> str:
    """`auto`: onnx on a CPU when onnxruntime-genai is installed, else torch (a GPU keeps torch: not measured to
    win there). `vllm` is never chosen by `auto`: it needs a server (or an environment to start one in)."""
    if runtime not in RUNTIMES:
        raise UserError(f"Unknown runtime '{runtime}'. Fix: use one of {', '.join(RUNTIMES)}.")
    if runtime == "onnx" and device != "cpu":
        raise UserError(f"The onnx runtime serves on the CPU only, not on '{device}'. Fix: --runtime torch or auto.")
    if runtime == "onnx" and not onnx_installed():
        raise RuntimeUnavailable(
            "The onnx runtime needs onnxruntime-genai. Fix: pip install -r requirements.txt, or --runtime torch."
        )
    if runtime == "auto":
        return "onnx" if device == "cpu" and onnx_installed() else "torch"
    return runtime
