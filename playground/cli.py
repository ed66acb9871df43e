"""`python -m playground ...`: every capability of the app, scriptable without a browser."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import config
from .models import (EMBEDDED, PRECISIONS, PRESETS, ModelLoadError, cached_copy, describe_source, embedded_available,
                     resolve_preset)
from .prompting import PromptError
from .store import StoreError

EXIT_USAGE = 2


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default=None, help=f"auto (default), {', '.join(PRESETS)}")
    parser.add_argument("--base", default=None, help="base model: Hub id, local folder or .gguf file")
    parser.add_argument("--sft", default=None, help="SFT model: Hub id, local folder or .gguf file")
    parser.add_argument("--data-dir", default=None, help=f"caches, database, adapters (env {config.DATA_DIR_ENV})")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model repos to run their own code")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (CPU: base model int8, SFT float; GPU: float), int8 (both), float")
    parser.add_argument("--serve-threads", type=int, default=None,
                        help="torch threads for generation (default: half the CPU cores)")


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
    return Engine.from_preset(preset, config.resolve_data_dir(args.data_dir), trust_remote_code=args.trust_remote_code,
                              device=args.device, precision=args.precision,
                              threads=args.serve_threads)


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
            "needs_conversion": (spec.startswith("embedded:") or spec.endswith(".gguf")) and not cached,
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


def add_round_options(parser: argparse.ArgumentParser) -> None:
    from .training import RoundSettings

    d = RoundSettings()
    parser.add_argument("--min-pairs", type=int, default=d.min_pairs, help="new pairs that start a round")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--beta", type=float, default=d.beta, help="DPO beta (strength of the pull to SFT)")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads of the trainer")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per forward/backward pass")
    parser.add_argument("--grad-accumulation", type=int, default=d.grad_accumulation,
                        help="passes per optimizer step (smaller batches, same step, less memory)")


def round_settings_from(args):
    from .training import RoundSettings

    return RoundSettings(min_pairs=args.min_pairs, epochs=args.epochs, learning_rate=args.learning_rate,
                         beta=args.beta, threads=args.threads, batch_size=args.batch_size,
                         grad_accumulation=args.grad_accumulation)


def store_from(args):
    from .store import Store

    return Store.open(config.resolve_data_dir(args.data_dir))


def cmd_train(args) -> int:
    from .models import model_folder
    from .training import exit_with_parent, run_round, watch

    data_dir = config.resolve_data_dir(args.data_dir)
    store = store_from(args)
    preset = resolve_preset(args.preset, args.base, args.sft)
    sft_dir = model_folder(preset.sft, data_dir, args.trust_remote_code)
    settings = round_settings_from(args)
    if args.watch:
        if args.parent_pid:
            exit_with_parent(args.parent_pid)
        watch(store, data_dir, sft_dir, settings, poll_seconds=args.poll)
        return 0
    store.recover_interrupted_rounds()
    version = run_round(store, data_dir, sft_dir, settings, force=True)
    if version is None:
        print("No pending pairs: nothing to train on. Vote first (or `python -m playground simulate`).")
        return 1
    print(f"Version {version} is now serving.")
    return 0


def cmd_versions(args) -> int:
    store = store_from(args)
    serving = store.serving_version()
    rows = store.versions()
    wins = {(w["arm"], w["adapter_version"]): w for w in store.vote_win_rates()}
    for row in rows:
        row["vote_win_rate"] = (wins.get(("pref", row["version"])) or {}).get("win_rate")
    if args.json:
        print(json.dumps({"serving_version": serving, "versions": rows}, indent=2, default=str))
        return 0
    if not rows:
        print("No adapter versions yet (version 0 = the SFT model serves the preference arm).")
        return 0
    print(f"{'':2}{'ver':>4} {'parent':>6} {'state':<6} {'pairs':>5} {'loss':>7} {'margin':>7} {'acc':>5} {'votes win':>9}  path")
    for row in rows:
        m = row["metrics"] or {}
        fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"{'*' if row['version'] == serving else ' ':2}{row['version']:>4} {row['parent_version'] or 0:>6} "
              f"{row['state']:<6} {fmt(row['pairs_used'], 'd'):>5} {fmt(m.get('final_loss'), '.3f'):>7} "
              f"{fmt(m.get('final_reward_margin'), '.3f'):>7} {fmt(m.get('final_reward_accuracy'), '.2f'):>5} "
              f"{fmt(row['vote_win_rate'], '.2f'):>9}  {row['path']}" + (f"  ({row['reason']})" if row["reason"] else ""))
    print("* = serving")
    return 0


def cmd_rollback(args) -> int:
    store = store_from(args)
    store.set_serving_version(args.version)
    print(f"Version {args.version} is now the serving version; a running app follows within seconds.")
    return 0


def cmd_export(args) -> int:
    store = store_from(args)
    rows = store.export_votes() if args.raw else store.export_pairs()
    n = 0
    with open(args.out, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            n += 1
    what = "votes with their answers" if args.raw else "preference pairs (TRL conversational format)"
    print(f"Wrote {n} {what} to {args.out}.")
    return 0


def cmd_simulate(args) -> int:
    from .core import Playground
    from .prompting import load_prompts
    from .simulate import Oracle, simulate, split_prompts, workspace

    oracle = Oracle.parse(args.oracle)
    prompts = load_prompts(args.prompts)
    heldout = load_prompts(args.heldout) if args.heldout else None
    if heldout is None:
        prompts, heldout = split_prompts(prompts)
    if args.heldout_limit:
        heldout = heldout[: args.heldout_limit]
    data_dir = config.resolve_data_dir(args.data_dir)
    preset = resolve_preset(args.preset, args.base, args.sft)
    playground = Playground.open(preset, workspace(data_dir), device=args.device, precision=args.precision,
                                 serve_threads=args.serve_threads,
                                 trust_remote_code=args.trust_remote_code, round_settings=round_settings_from(args))
    result = simulate(playground, oracle, args.votes, prompts, heldout, mode=args.mode,
                      sampling=sampling_from(args), seed=args.seed or 0)
    result["workspace"] = str(playground.data_dir)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    b, a = result["before"], result["after"]
    print(f"oracle {result['oracle']}, {result['votes']['votes']} {args.mode} votes -> {result['votes']['pairs']} pairs, "
          f"{len(result['rounds'])} rounds, serving v{a['adapter_version']}")
    print(f"held-out win rate of preference-tuned vs SFT: {b['win_rate']:.2f} before -> {a['win_rate']:.2f} after")
    print(f"mean chars  sft {a['mean_chars']['sft']:.0f}  pref {b['mean_chars']['pref']:.0f} -> {a['mean_chars']['pref']:.0f}")
    print(f"fluency (perplexity under SFT) sft {a['fluency_sft_perplexity']['sft']:.2f}  "
          f"pref {a['fluency_sft_perplexity']['pref']:.2f}")
    for r in result["rounds"]:
        last = r["steps"][-1] if r["steps"] else {}
        print(f"  round {r['round']}: {r['status']} v{r['version']} pairs {r['pairs_used']} {r['seconds']:.0f}s "
              f"loss {last.get('loss')} margin {last.get('reward_margin')} acc {last.get('reward_accuracy')}")
    print(f"time: {result['seconds']}; workspace: {result['workspace']}")
    return 0


BENCH_SUITES = ("generate", "dpo", "loop", "startup")


def cmd_bench(args) -> int:
    """The suites live in bench/ (a sibling of this package in the repository): each prints one JSON object."""
    import importlib
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"bench.{ {'generate': 'generation'}.get(args.suite, args.suite) }")
    forwarded = [*args.bench_args, *(["--json"] if args.json else [])]
    if args.data_dir:
        forwarded += ["--data-dir", args.data_dir]
    module.main(forwarded)
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

    tr = sub.add_parser("train", help="run one DPO round now (--once), or keep training as votes arrive (--watch)")
    add_model_options(tr)
    add_round_options(tr)
    mode = tr.add_mutually_exclusive_group()
    mode.add_argument("--watch", action="store_true", help="the trainer process: a round whenever enough pairs wait")
    mode.add_argument("--once", action="store_true", help="one round on the pending pairs, then exit (default)")
    tr.add_argument("--poll", type=float, default=2.0, help="seconds between checks in --watch mode")
    tr.add_argument("--parent-pid", type=int, default=None, help="stop when this process (the app) is gone")
    tr.set_defaults(func=cmd_train)

    ver = sub.add_parser("versions", help="adapter versions with their round metrics and vote win rates")
    ver.add_argument("--data-dir", default=None)
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_versions)

    rb = sub.add_parser("rollback", help="make an earlier adapter version the serving one (0 = no adapter)")
    rb.add_argument("version", type=int)
    rb.add_argument("--data-dir", default=None)
    rb.set_defaults(func=cmd_rollback)

    ex = sub.add_parser("export", help="preference pairs as JSONL in TRL's format (--raw: every vote)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--raw", action="store_true")
    ex.add_argument("--data-dir", default=None)
    ex.set_defaults(func=cmd_export)

    sim = sub.add_parser("simulate", help="a rule-based voter drives the real loop; reports held-out win rate")
    sim.add_argument("--oracle", required=True, help="shorter | no-word:WORD | contains:WORD")
    sim.add_argument("--votes", type=int, default=64)
    sim.add_argument("--mode", choices=("pairwise", "best-of-three"), default="pairwise")
    sim.add_argument("--prompts", default=None, help="prompt file (JSONL); default assets/prompts.jsonl")
    sim.add_argument("--heldout", default=None, help="held-out prompt file; default every 4th prompt of --prompts")
    sim.add_argument("--heldout-limit", type=int, default=None, help="evaluate on the first N held-out prompts")
    sim.add_argument("--json", action="store_true")
    add_model_options(sim)
    add_round_options(sim)
    add_sampling_options(sim)
    sim.set_defaults(func=cmd_simulate, temperature=0.8, top_p=0.95)

    be = sub.add_parser("bench", help="benchmarks against plain baselines, one JSON object each (see bench/)")
    be.add_argument("suite", choices=BENCH_SUITES)
    be.add_argument("--json", action="store_true")
    be.add_argument("--data-dir", default=None)
    be.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the suite, e.g. --tokens 64")
    be.set_defaults(func=cmd_bench)
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
    except (ModelLoadError, PromptError, ValueError, StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
