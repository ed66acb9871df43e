"""How long "Why this answer?" takes on the embedded default: DPO's implicit reward of one stored answer.

    python -m bench.explain [--json] [--tokens 128] [--repeats 5]

The answer is one the SFT model wrote (greedy, --tokens long) to a fixed prompt. Figures, each the median of
--repeats: explaining it under the serving version (the torch runtime's loaded adapter), under another version
(its adapter loaded for the call and dropped after it, as on the onnx runtime or for `--version`), and at version
0 (one pass). Baseline, in the same process: one plain forward pass of the SFT model over the same tokens; the
ratios say what the explanation costs in forward passes. Also the process memory that loading the SFT weights, a
greedy answer and the first explanation add (what an onnx-runtime server adds when someone first asks).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PROMPT = "Explain what a vaccine does, in plain words."


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args) -> dict:
    import psutil
    import torch

    from bench.common import lora_adapter, report
    from playground.explain import answer_tokens, explain
    from playground.generation import Engine
    from playground.models import model_folder, resolve_preset
    from playground.runtimes import neutral
    from playground.settings import ModelSettings
    from playground.store import Store

    torch.set_num_threads(args.threads)
    data_dir = ModelSettings(data_dir=args.data_dir).resolved_data_dir()
    preset = resolve_preset(args.preset)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    engine = Engine.for_scoring(preset, data_dir)
    tokenizer, model = engine.sft.tokenizer, engine.sft.model
    ids = tokenizer(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
        ),
        return_tensors="pt",
        add_special_tokens=False,
    ).input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=args.tokens, **neutral.TRANSFORMERS | {"min_new_tokens": args.tokens})
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    sft_dir = model_folder(preset.sft, data_dir, False)
    with tempfile.TemporaryDirectory() as work:
        store = Store.open(work)
        comparison, _ = store.add_comparison(PROMPT, "bench", answers=[{"arm": "sft", "text": answer, "model": "sft"}])
        versions = []
        for seed in (1, 2):  # two real adapters in PEFT's format, non-zero so they change the scores
            folder = lora_adapter(sft_dir, Path(work) / f"v{seed}", seed=seed, init_lora_weights=False)
            versions.append(
                store.finish_round(store.start_round(store.serving_version(), [], {"beta": 0.1}, None), folder, {})
            )
        engine.use_adapter(versions[0], store.version(versions[0])["path"])
        messages = [{"role": "user", "content": PROMPT}]
        prompt_ids, answer_ids = answer_tokens(tokenizer, messages, answer)
        sequence = torch.tensor([prompt_ids + answer_ids])

        def plain_forward():  # through the same model object, so the same layers (adapters there cost the same)
            with torch.inference_mode():
                model(input_ids=sequence)

        explain(engine, store, comparison, "sft", versions[0])  # the first one: what it adds to a server's memory
        rss_added = process.memory_info().rss - rss_before
        baseline = median_seconds(plain_forward, args.repeats)
        serving = median_seconds(lambda: explain(engine, store, comparison, "sft", versions[0]), args.repeats)
        other = median_seconds(lambda: explain(engine, store, comparison, "sft", versions[1]), args.repeats)
        at_v0 = median_seconds(lambda: explain(engine, store, comparison, "sft", 0), args.repeats)
        total = explain(engine, store, comparison, "sft", versions[0]).total_reward
    figures = {
        "answer_tokens": len(answer_ids),
        "sequence_tokens": sequence.shape[1],
        "baseline_plain_forward_s": round(baseline, 3),
        "explain_serving_version_s": round(serving, 3),
        "explain_other_version_s": round(other, 3),
        "explain_version_0_s": round(at_v0, 3),
        "serving_version_vs_baseline": round(serving / baseline, 2),
        "other_version_vs_baseline": round(other / baseline, 2),
        "implicit_reward_of_the_answer": round(total, 4),
        # The torch SFT weights (memory-mapped, paged in by the first pass), an answer of the bench's own, one
        # explanation: what an onnx-runtime server, which holds no torch weights, adds when someone first asks.
        "rss_added_by_weights_and_first_explanation_mb": round(rss_added / 2**20),
    }
    return report(
        "explain",
        {
            "preset": preset.name,
            "tokens": args.tokens,
            "threads": args.threads,
            "repeats": args.repeats,
            "answer": "greedy SFT",
        },
        figures,
        args.json,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads: half the cores")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
