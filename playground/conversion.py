"""The one-time GGUF → transformers conversion of a model (the embedded models ship as GGUF files).

transformers de-quantizes GGUF weights to fp32 while it loads them; the result is saved as a safetensors folder
under `<data dir>/models` that every later start loads in seconds. The conversion runs in a child process
(`python -m playground.conversion GGUF TARGET`): two models convert at once on two cores (the parse is pure
Python, bound to one core and the GIL), and the server never holds the fp32 weights it only converts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .processes import child_env, last_words

log = logging.getLogger(__name__)


class ConversionError(RuntimeError):
    """The GGUF file could not be converted; the message carries the converter's last words."""


@contextlib.contextmanager
def one_gguf_parse():
    """transformers opens the GGUF file four times (the tokenizer's config and vocabulary, the model's config, the
    weights), and each time `GGUFReader` parses every metadata field in Python and transformers turns each into
    Python values: for Gemma 3's 262k-token vocabulary about 12 s and 3 s a time. The reader is a read-only view of
    a memory-mapped file, so one parse serves all four, and the metadata read once serves the three that need no
    tensors (each gets its own copy: callers change what they get)."""
    import copy

    import gguf
    from transformers import modeling_gguf_pytorch_utils as hf_gguf

    original_reader, original_load = gguf.GGUFReader, hf_gguf.load_gguf_checkpoint
    readers: dict = {}
    metadata: dict = {}

    def reader(path, *args, **kwargs):
        key = (str(Path(path).resolve()), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original_reader(path, *args, **kwargs)
        return readers[key]

    def load_checkpoint(path, return_tensors=False, *args, **kwargs):
        if return_tensors or args or kwargs:
            return original_load(path, return_tensors, *args, **kwargs)
        key = str(Path(path).resolve())
        if key not in metadata:
            metadata[key] = original_load(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader, hf_gguf.load_gguf_checkpoint = reader, load_checkpoint
    try:
        yield
    finally:
        gguf.GGUFReader, hf_gguf.load_gguf_checkpoint = original_reader, original_load


def _load_gguf(gguf: Path, trust_remote_code: bool):
    """The model (de-quantized to fp32: the slow part) and its tokenizer, from one parse of the file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, trust_remote_code=trust_remote_code
        )
    # The weights are plain fp32 now; without this the saved config would still claim GGUF quantization.
    model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer


def convert_here(gguf: Path, target: Path, trust_remote_code: bool = False) -> None:
    """Convert in this process, atomically: a half-written copy is never used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model, tokenizer = _load_gguf(gguf, trust_remote_code)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process finished first; its copy is as good as ours
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert(gguf: Path, target: Path, trust_remote_code: bool = False) -> None:
    """Convert `gguf` into the transformers folder `target` in a child process (see the module's docstring)."""
    log.info("Converting %s once into %s (later starts load the copy in seconds)...", gguf.name, target)
    start = time.perf_counter()
    command = [sys.executable, "-m", "playground.conversion", str(gguf), str(target)]
    if trust_remote_code:
        command.append("--trust-remote-code")
    done = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        raise ConversionError(
            last_words(done.stderr or done.stdout) or f"the converter exited with code {done.returncode}"
        )
    log.info("Converted %s in %.0f s.", gguf.name, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m playground.conversion", description=__doc__)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    convert_here(args.gguf, args.target, args.trust_remote_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
