"""The onnx runtime's decode worker: the child process that holds one ONNX model (`python -m
playground.runtimes.onnx.worker serve`), and the command that builds an ONNX copy in its own process (`… build`).

It imports only ONNX Runtime GenAI and numpy: the parent (client.DecodeWorker) sends a request, then for each token
step receives one token per row and answers which rows go on (lockstep: the parent's stop rules, cancels and
streaming stay in generation.py, the same for every runtime). Rows that can share a generator decode as one batch
(`batches`): one pass over the weights per step for the SFT and the preference answer. Sampling draws each row's
token from its own seed (sampling.py): answers are reproducible per seed, alone or in a batch, though not the same
random draws as the torch runtime's.
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


def _serve(conn, model_dir: str, threads: int, row_scale: str | None = None) -> None:
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
        probe = og.Generator(model, params)
        scales = gate_rows(probe, row_scale, [None], np) if row_scale is not None else None
        probe.append_tokens(np.asarray([genai.get("bos_token_id") or 0], dtype=np.int32))
        del probe, scales  # the probe is done: now its scales may go
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
                _generate(conn, model, adapters, context_length, row_scale, *message[1:], np=np, og=og)
            else:
                conn.send(("error", f"unknown request {kind}"))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


def gate_rows(generator, row_scale: str, row_adapters: list, np):
    """Set the graph's per-row LoRA scale: 1 where the row runs the generator's adapter, 0 where it is the SFT
    model. Returns the array, which the caller keeps as long as the generator: ONNX Runtime GenAI reads its memory
    at every step without holding a reference (a freed one is overwritten and the gate flips rows at random)."""
    scales = np.asarray([1.0 if adapter else 0.0 for adapter in row_adapters], dtype=np.float32).reshape(-1, 1, 1)
    generator.set_model_input(row_scale, scales)
    return scales


def batches(rows: list[tuple[int, str | None]], gated: bool) -> list[tuple[str | None, list[int]]]:
    """Which rows share a generator: (adapter, row indexes). One generator runs one adapter; on a gated graph the
    rows without an adapter join the first adapter's generator with a row scale of 0, so the SFT and the
    preference answer are one batch. Without the gate each adapter (and no adapter) is its own generator."""
    groups: dict[str | None, list[int]] = {}
    for i, (_, adapter) in enumerate(rows):
        groups.setdefault(adapter, []).append(i)
    if gated and None in groups and len(groups) > 1:
        plain = groups.pop(None)
        first = next(iter(groups))
        groups[first] = sorted(groups[first] + plain)
    return list(groups.items())


def _generate(
    conn,
    model,
    adapters,
    context_length,
    row_scale,
    prompt_ids,
    rows,
    temperature,
    top_p,
    greedy,
    max_new_tokens,
    *,
    np,
    og,
) -> None:
    from ..neutral import GENAI
    from .sampling import draw, forced

    # A sliding-window model (Gemma 3) needs a KV buffer at least as long as its window, whatever the request.
    length = min(context_length, max(len(prompt_ids) + max_new_tokens, 1024))
    groups = []
    for adapter, indexes in batches(rows, gated=row_scale is not None):
        params = og.GeneratorParams(model)
        # Greedy here either way: sampled rows get their token chosen by `draw` and forced (sampling.py says why);
        # the model's own penalties from genai_config.json do not apply (neutral.py).
        params.set_search_options(**GENAI, max_length=length, batch_size=len(indexes))
        generator = og.Generator(model, params)
        if adapter:
            generator.set_active_adapter(adapters, adapter)
        scales = gate_rows(generator, row_scale, [rows[i][1] for i in indexes], np) if row_scale is not None else None
        generator.append_tokens(np.asarray([prompt_ids] * len(indexes), dtype=np.int32))
        groups.append((generator, indexes, scales))
    rngs = None if greedy else [np.random.default_rng(seed) for seed, _ in rows]
    active = [True] * len(rows)
    for _ in range(max_new_tokens):
        step: list[int | None] = [None] * len(rows)
        for generator, indexes, _ in groups:
            if not any(active[i] for i in indexes):
                continue  # every row of this batch has stopped: no more passes over the weights for it
            if generator.is_done():
                for i in indexes:
                    active[i] = False
                continue
            if rngs is not None:
                logits = generator.get_logits()
                chosen = [draw(logits[j, -1], rngs[i], temperature, top_p) for j, i in enumerate(indexes)]
                generator.set_logits(forced(logits, chosen))
            generator.generate_next_token()
            tokens = generator.get_next_tokens()
            for j, i in enumerate(indexes):
                if active[i]:
                    step[i] = int(tokens[j])
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
    quantize = sub.add_parser("quantize", help="the int4 copy of an fp32 ONNX folder (quantize.py)")
    quantize.add_argument("source")
    quantize.add_argument("out")
    calibrate = sub.add_parser("calibrate", help="time each ONNX copy and check it against the first (calibration.py)")
    calibrate.add_argument("folders", nargs="+", help="the reference (fp32) first")
    calibrate.add_argument("--threads", default="1", help="thread counts to time, e.g. 1,4")
    serve = sub.add_parser("serve", help="a decode worker (started by DecodeWorker)")
    serve.add_argument("model_dir")
    serve.add_argument("--threads", type=int, default=1)
    serve.add_argument("--fds", required=True, help="read,write: the pipes to the parent")
    serve.add_argument("--row-scale", help="the graph's per-row LoRA scale input (build.ROW_SCALE), if it has one")
    args = parser.parse_args(argv)
    if args.command == "build":
        from .build import _build

        _build(args.source, args.out, args.precision, [t for t in args.lora_targets.split(",") if t])
    elif args.command == "quantize":
        from .quantize import quantize_folder

        quantize_folder(args.source, args.out)
    elif args.command == "calibrate":
        from .calibration import measure

        layouts = [int(t) for t in args.threads.split(",")]
        print(json.dumps(measure(args.folders, layouts, json.loads(sys.stdin.read()))))
    else:
        read_fd, write_fd = (int(fd) for fd in args.fds.split(","))
        _serve(Duplex(write_fd, read_fd), args.model_dir, args.threads, args.row_scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
