"""`python -m playground ...`: every capability of the app, scriptable without a browser."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import config
from .models import EMBEDDED, PRESETS, ModelLoadError, cached_copy, describe_source, embedded_available, resolve_preset
from .prompting import PromptError

EXIT_USAGE = 2


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help=f"auto (default), {', '.join(PRESETS)}")
    parser.add_argument("--base", default=None, help="base model: Hub id, local folder or .gguf file")
    parser.add_argument("--sft", default=None, help="SFT model: Hub id, local folder or .gguf file")
    parser.add_argument("--data-dir", default=None, help=f"caches, database, adapters (env {config.DATA_DIR_ENV})")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model repos to run their own code")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=None)


def sampling_from(args):
    from .generation import Sampling

    return Sampling(args.temperature, args.top_p, args.max_new_tokens, args.seed)


def engine_from(args):
    from .generation import Engine

    preset = resolve_preset(args.preset, args.base, args.sft)
    return Engine.from_preset(
        preset, config.resolve_data_dir(args.data_dir), trust_remote_code=args.trust_remote_code, device=args.device
    )


def cmd_generate(args) -> int:
    from .generation import ARM_TITLES
    from .prompting import check_prompt

    check_prompt(args.prompt)  # before minutes of model loading
    engine = engine_from(args)
    answers = engine.generate(args.prompt, sampling_from(args))
    if args.json:
        print(json.dumps({arm: a.to_dict() for arm, a in answers.items()}, indent=2))
        return 0
    for arm, answer in answers.items():
        version = f" v{answer.adapter_version}" if arm == "pref" else ""
        print(f"=== {ARM_TITLES[arm]}{version} ({answer.model}) ===")
        print(answer.text or "(empty answer)")
        rate = f"{answer.tokens_per_second:.1f} tok/s"
        print(f"--- {answer.new_tokens} tokens, {answer.seconds:.1f} s, {rate}, ends: {answer.finish_reason}"
              + (f"; {answer.note}" if answer.note else "") + "\n")
    return 0


def info(args) -> dict:
    data_dir = config.resolve_data_dir(args.data_dir)
    preset = resolve_preset(args.preset, args.base, args.sft)
    models = {}
    for role, spec in (("base", preset.base), ("sft", preset.sft)):
        cached = cached_copy(spec, data_dir)
        models[role] = {
            "spec": spec,
            "source": describe_source(spec),
            "converted_copy": str(cached) if cached else None,
            "needs_conversion": spec.startswith("embedded:") or spec.endswith(".gguf") and not cached,
        }
    return {
        "preset": preset.name,
        "requested_preset": args.preset or "auto",
        "note": preset.note,
        "models": models,
        "data_dir": str(data_dir),
        "embedded_packages_installed": embedded_available(),
        "embedded_models": {name: m.description for name, m in EMBEDDED.items()},
        "presets": {name: {"base": p.base, "sft": p.sft} for name, p in PRESETS.items()},
    }


def cmd_info(args) -> int:
    facts = info(args)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"preset:    {facts['preset']} (asked: {facts['requested_preset']}; {facts['note']})")
    for role, m in facts["models"].items():
        state = f"converted copy: {m['converted_copy']}" if m["converted_copy"] else (
            "will be converted on first use" if m["needs_conversion"] else "loaded by transformers")
        print(f"{role + ':':<10} {m['spec']} [{m['source']}] {state}")
    print(f"data dir:  {facts['data_dir']}")
    print(f"embedded packages installed: {facts['embedded_packages_installed']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m playground", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="three answers (base, SFT, preference-tuned) for one prompt")
    gen.add_argument("prompt")
    add_model_options(gen)
    add_sampling_options(gen)
    gen.add_argument("--json", action="store_true")
    gen.set_defaults(func=cmd_generate)

    inf = sub.add_parser("info", help="resolved preset, model sources, data directory, cache state")
    add_model_options(inf)
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ModelLoadError, PromptError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
