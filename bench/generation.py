"""Three-arm streaming generation vs a plain `model.generate` of the SFT model, in the same process.

    python bench/generation.py [--tokens 128] [--repeats 3] [--json]

Figures per arm: time to first token, tokens/s; the three arms' wall time; and the baseline: one plain greedy
`generate` of the SFT model for as many new tokens as the longest arm wrote. Ratios are against that baseline, so
they hold on a noisy machine. A LoRA adapter (r=8 on q,v, random non-zero weights: speed does not depend on the
values) is loaded so the preference arm really runs, and the base arm's answer-boundary stop is off so it runs
the full length unless it emits EOS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Write a long, detailed story about a dragon who learns to bake bread."


def plain_generate(loaded, prompt: str, tokens: int) -> float:
    import torch

    from playground.prompting import chat_prompt

    inputs = loaded.tokenizer(chat_prompt(loaded.tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        loaded.model.generate(**inputs, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                              pad_token_id=loaded.tokenizer.pad_token_id)
    return time.perf_counter() - start


def random_adapter(model_dir: str, out: str) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.save_pretrained(out)
    return out


def three_arms(engine, sampling, repeats: int) -> tuple[float, dict]:
    """Median wall time of the app's streamed three arms, and per-arm medians of ttft, tokens/s, tokens."""
    walls, per_arm = [], {arm: {"ttft": [], "tok_s": [], "tokens": []} for arm in ("base", "sft", "pref")}
    for _ in range(repeats):
        start = time.perf_counter()
        answers = engine.generate(PROMPT, sampling)
        walls.append(time.perf_counter() - start)
        for arm, answer in answers.items():
            per_arm[arm]["ttft"].append(answer.ttft)
            per_arm[arm]["tok_s"].append(answer.tokens_per_second)
            per_arm[arm]["tokens"].append(answer.new_tokens)
    return statistics.median(walls), {arm: {k: statistics.median(v) for k, v in stats.items()}
                                      for arm, stats in per_arm.items()}


def naive_sequential(engine, sampling) -> float:
    """The three arms one after another, one row each (no batching, no concurrency)."""
    start = time.perf_counter()
    for arm in ("base", "sft", "pref"):
        engine.generate(PROMPT, sampling, arms=(arm,))
    return time.perf_counter() - start


def run(args) -> dict:
    from bench.common import report
    from playground import config
    from playground.generation import Engine, Sampling
    from playground.models import load_model, resolve_preset

    preset = resolve_preset(args.preset)
    data_dir = config.resolve_data_dir(args.data_dir)
    engine = Engine.from_preset(preset, data_dir, device=args.device)
    engine.base_stops = ()
    with tempfile.TemporaryDirectory() as adapter_dir:
        engine.use_adapter(1, random_adapter(engine.sft.source, adapter_dir))
    sampling = Sampling(temperature=0, max_new_tokens=args.tokens, seed=0)
    engine.generate(PROMPT, Sampling(temperature=0, max_new_tokens=8, seed=0))  # warm-up
    plain_generate(engine.sft, PROMPT, 8)

    wall, per_arm = three_arms(engine, sampling, args.repeats)
    longest = int(max(stats["tokens"] for stats in per_arm.values()))
    baseline = statistics.median(plain_generate(engine.sft, PROMPT, longest) for _ in range(args.repeats))
    naive = naive_sequential(engine, sampling)
    figures = {
        "three_arms_wall_s": round(wall, 2),
        "baseline_plain_generate_sft_s": round(baseline, 2),
        "ratio_three_arms_to_one_plain": round(wall / baseline, 2),
        "naive_three_arms_sequential_s": round(naive, 2),
        "ratio_naive_to_one_plain": round(naive / baseline, 2),
    }
    for arm, stats in per_arm.items():
        figures[f"{arm}_ttft_s"] = round(stats["ttft"], 3)
        figures[f"{arm}_tokens_per_s"] = round(stats["tok_s"], 2)
        figures[f"{arm}_new_tokens"] = int(stats["tokens"])
    if args.device == "cpu":
        # The option measured in the same process: the base arm with int8 weights.
        engine.base = load_model(preset.base, data_dir, "base", device=args.device, int8=True)
        int8_wall, int8_arms = three_arms(engine, sampling, args.repeats)
        figures["int8_base_three_arms_wall_s"] = round(int8_wall, 2)
        figures["int8_base_ratio_to_one_plain"] = round(int8_wall / baseline, 2)
        figures["int8_base_tokens_per_s"] = round(int8_arms["base"]["tok_s"], 2)
        figures["int8_base_ttft_s"] = round(int8_arms["base"]["ttft"], 3)
    settings = {"preset": preset.name, "prompt": PROMPT, "max_new_tokens": args.tokens, "repeats": args.repeats,
                "decoding": "greedy", "adapter_version": 1, "device": args.device,
                "threads": __import__("torch").get_num_threads()}
    return report("generate", settings, figures, args.json)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="embedded")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
