"""The onnx runtime's decode worker: the child process that holds one ONNX model (`python -m
playground.runtimes.onnx.worker serve`), and the command that builds an ONNX copy in its own process (`… build`).

It imports only ONNX Runtime GenAI: the parent (client.DecodeWorker) sends a request, then for each token
step receives one token per row and answers which rows go on (lockstep: the parent's stop rules, cancels and
streaming stay in generation.py, the same for every runtime). Sampling runs here with one generator (and so one
seed) per row: answers are reproducible per seed, though not the same random draws as the torch runtime's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class Duplex:
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


def _serve(conn, model_dir: str, threads: int) -> None:
    """The worker's loop (child process): load the model, then answer requests until told to close."""
    try:
        import numpy as np
        import onnxruntime_genai as og

        config = og.Config(model_dir)
        config.overlay(
            json.dumps(
                {
                    "model": {
                        "decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}
                    }
                }
            )
        )
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
            elif kind == "generate":
                _generate(conn, model, adapters, context_length, *message[1:], np=np, og=og)
            else:
                conn.send(("error", f"unknown request {kind}"))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


def _generate(
    conn, model, adapters, context_length, prompt_ids, rows, temperature, top_p, greedy, max_new_tokens, *, np, og
) -> None:
    # A sliding-window model (Gemma 3) needs a KV buffer at least as long as its window, whatever the request.
    length = min(context_length, max(len(prompt_ids) + max_new_tokens, 1024))
    generators = []
    for seed, adapter in rows:
        params = og.GeneratorParams(model)
        options = {"max_length": length, "batch_size": 1}
        if greedy:
            options["do_sample"] = False
        else:
            options |= {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0, "random_seed": seed}
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

    parser = argparse.ArgumentParser(prog="python -m playground.runtimes.onnx.worker")
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
        from .build import _build

        _build(args.source, args.out, args.precision, [t for t in args.lora_targets.split(",") if t])
    else:
        read_fd, write_fd = (int(fd) for fd in args.fds.split(","))
        _serve(Duplex(write_fd, read_fd), args.model_dir, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
