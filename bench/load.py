"""Many people at once: N concurrent sessions, each asking for three answers (base, SFT, preference-tuned) turn
after turn, on each serving runtime in the same run.

    python -m playground bench load [--sessions 10,50] [--turns 2] [--tokens 32] [--runtimes onnx,torch,vllm]
                                    [--base-on-vllm]

Figures per runtime and N: complete turns (all three answers) per minute, the p50 and p95 seconds from asking to
the last answer, and the p95 time to the first token of the SFT answer. The baseline is one session alone on the
same runtime (its turn seconds), so `ratio_p95_to_alone` says how much waiting N sessions add. A LoRA adapter is
served (the preference arm really runs). Sessions are threads calling the Engine, as the Gradio queue's workers do.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

PROMPTS = [
    "Why is the sky blue?",
    "Give me three tips for sleeping better.",
    "Write a haiku about rain.",
    "How do I boil an egg?",
    "What causes the seasons on Earth?",
    "Describe a cat to someone who never saw one.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_sessions(engine, sessions: int, turns: int, tokens: int) -> dict:
    from playground.settings import Sampling

    latencies, first_tokens, errors = [], [], []
    lock = threading.Lock()

    def session(number: int) -> None:
        for turn in range(turns):
            sampling = Sampling(temperature=0.7, max_new_tokens=tokens, seed=number * 100 + turn)
            start = time.perf_counter()
            try:
                answers = engine.generate(PROMPTS[(number + turn) % len(PROMPTS)], sampling)
            except Exception as error:  # counted, not fatal: the figures say how many failed
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                if any(a.error for a in answers.values()):
                    errors.append(next(a.error for a in answers.values() if a.error))
                    continue
                latencies.append(time.perf_counter() - start)
                first_tokens.append(answers["sft"].ttft or 0.0)

    threads = [threading.Thread(target=session, args=(n,), daemon=True) for n in range(sessions)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if not latencies:
        return {"errors": len(errors), "first_error": errors[0] if errors else None}
    return {
        "turns_per_minute": round(60 * len(latencies) / wall, 1),
        "p50_s": round(statistics.median(latencies), 2),
        "p95_s": round(percentile(latencies, 0.95), 2),
        "p95_sft_ttft_s": round(percentile(first_tokens, 0.95), 2),
        "turns": len(latencies),
        "errors": len(errors),
        "wall_s": round(wall, 1),
    }


def run(args) -> dict:
    from bench.common import lora_adapter, report
    from playground.generation import Engine
    from playground.models import model_folder, resolve_preset
    from playground.runtimes.vllm.server import VllmOptions
    from playground.settings import ModelSettings

    preset = resolve_preset(args.preset)
    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    adapter_dir = tempfile.mkdtemp(prefix="bench-load-adapter-")
    lora_adapter(model_folder(preset.sft, data_dir, trust_remote_code=False), adapter_dir, b_std=0.01)
    counts = [int(n) for n in args.sessions.split(",")]
    figures = {}
    base_server = None
    if args.base_on_vllm and not args.base_vllm_url and "vllm" in args.runtimes.split(","):
        from playground.models import load_model
        from playground.runtimes.vllm.server import VllmServer, find_python

        source = load_model(preset.base, data_dir, "base", weights=False).source
        base_server = VllmServer(find_python(), source, log_path=data_dir / "vllm-bench-base.log").start()
        args.base_vllm_url = base_server.url
    for runtime in args.runtimes.split(","):
        start = time.perf_counter()
        engine = Engine.from_preset(
            preset, data_dir, runtime=runtime, vllm=VllmOptions(url=args.vllm_url, base_url=args.base_vllm_url)
        )
        try:
            engine.use_adapter(1, adapter_dir)
            engine.generate(PROMPTS[0], None)  # warm-up
            result = {"start_s": round(time.perf_counter() - start, 1), "runtimes": engine.describe()}
            alone = run_sessions(engine, 1, args.turns, args.tokens)
            result["alone"] = alone
            for n in counts:
                measured = run_sessions(engine, n, args.turns, args.tokens)
                if "p95_s" in measured and "p50_s" in alone:
                    measured["ratio_p95_to_alone"] = round(measured["p95_s"] / alone["p50_s"], 2)
                result[f"sessions_{n}"] = measured
            figures[runtime] = result
        finally:
            engine.close()
    if base_server is not None:
        base_server.stop()
    settings = {
        "preset": preset.name,
        "sessions": counts,
        "turns_per_session": args.turns,
        "max_new_tokens": args.tokens,
        "sampling": "temperature 0.7, one seed per turn",
        "adapter": "r=8 q,v",
    }
    return report("load", settings, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--sessions", default="10,50", help="concurrent sessions, comma-separated")
    parser.add_argument("--turns", type=int, default=2, help="turns each session asks, one after another")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runtimes", default="onnx,torch,vllm")
    parser.add_argument("--vllm-url", default=None)
    parser.add_argument("--base-vllm-url", default=None)
    parser.add_argument(
        "--base-on-vllm",
        action="store_true",
        help="with the vllm runtime, serve the base model from a vLLM server of its own too",
    )
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
