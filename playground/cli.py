"""`python -m playground ...`: every capability of the app, scriptable without a browser.

Every command takes the model options (they pick the data set: see data_sets.py); the settings are defined once
in settings.py, each from its flag, else its PLAYGROUND_* environment variable, else its default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from .errors import UserError
from .models import ModelLoadError
from .prompting import PromptError
from .runtimes import AdapterError, RuntimeUnavailable
from .settings import (
    ModelSettings,
    RoundSettings,
    Sampling,
    add_settings,
    from_dict,
    options_table,
    parser_class,
    settings_from,
)
from .store import StoreError

EXIT_USAGE = 2


_opened = []  # the playgrounds a command opened: closed when it ends, so their durable copy is flushed


def opened(playground):
    _opened.append(playground)
    return playground


def playground_from(args, rounds: RoundSettings | None = None):
    from .core import Playground

    return opened(Playground(settings_from(args, ModelSettings), rounds))


def read_history(path: str) -> list[dict]:
    """A conversation's earlier turns from a JSON file: a list of {"role", "content"} messages (check_history)."""
    from .prompting import check_history

    try:
        history = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise PromptError(f"Cannot read the history file {path}: {error.strerror or error}.") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PromptError(f"The history file {path} is not JSON ({error}).") from error
    try:
        return check_history(history)
    except PromptError as error:
        raise PromptError(f"{path}: {error}") from error


def cmd_generate(args) -> int:
    from .generation import ARM_TITLES, AdapterError
    from .prompting import check_prompt

    check_prompt(args.prompt)  # before minutes of model loading
    history = read_history(args.history) if args.history else []
    playground = playground_from(args)
    playground.load_models()
    if args.version is not None:
        try:
            playground.serve(args.version)
        except AdapterError as error:
            raise StoreError(f"{error}. Pick another version (`python -m playground versions`).") from error
    answers = playground.engine.generate(args.prompt, settings_from(args, Sampling), history=history)
    serving = playground.store.serving_version()
    if args.json:
        report = {arm: a.to_dict() for arm, a in answers.items()}
        report |= {
            "adapter_version": playground.engine.adapter_version,
            "serving_version": serving,
            "data_set": playground.data_set.name,
            "history_turns": len(history) // 2,
            "runtime": playground.engine.runtime,
            "runtimes": playground.engine.describe(),
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"(data set {playground.data_set.name}; adapter v{playground.engine.adapter_version}"
        + ("" if playground.engine.adapter_version == serving else f", the app serves v{serving}")
        + ")\n"
    )
    for arm, answer in answers.items():
        version = f" v{answer.adapter_version}" if arm == "pref" else ""
        print(f"=== {ARM_TITLES[arm]}{version} ({answer.model}) ===")
        print(answer.text or (f"(no answer: {answer.error})" if answer.error else "(empty answer)"))
        rate = f"{answer.tokens_per_second:.1f} tok/s"
        unseen = (
            f"; did not see the {answer.dropped_turns} oldest of {len(history) // 2} earlier turns (context)"
            if answer.dropped_turns
            else ""
        )
        print(
            f"--- {answer.new_tokens} tokens, {answer.seconds:.1f} s, {rate}, ends: {answer.finish_reason}"
            + (f"; {answer.note}" if answer.note else "")
            + unseen
            + "\n"
        )
    return 0


def info(args) -> dict:
    from .data_sets import legacy_store, list_data_sets
    from .models import EMBEDDED, PRESETS, cached_copy, describe_source, embedded_available

    playground = playground_from(args)
    preset, data_dir = playground.preset, playground.data_dir
    models = {}
    for role, spec in (("base", preset.base), ("sft", preset.sft)):
        cached = cached_copy(spec, data_dir)
        models[role] = {
            "spec": spec,
            "source": describe_source(spec),
            "converted_copy": str(cached) if cached else None,
            "needs_conversion": (spec.startswith("embedded:") or spec.endswith(".gguf")) and not cached,
        }
    counts = playground.store.counts()
    return {
        "preset": preset.name,
        "requested_preset": args.preset,
        "note": preset.note,
        "models": models,
        "data_dir": str(data_dir),
        "data_set": {
            "name": playground.data_set.name,
            "path": str(playground.data_set.root),
            "votes": counts["votes"],
            "pairs": counts["pairs"],
            "versions": counts["versions"],
            "serving_version": playground.store.serving_version(),
        },
        "data_sets": list_data_sets(data_dir),
        "unadopted_store": legacy_store(data_dir),
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
        state = (
            f"converted copy: {m['converted_copy']}"
            if m["converted_copy"]
            else ("will be converted on first use" if m["needs_conversion"] else "loaded by transformers")
        )
        print(f"{role + ':':<10} {m['spec']} [{m['source']}] {state}")
    print(f"data dir:  {facts['data_dir']}")
    ds = facts["data_set"]
    print(
        f"data set:  {ds['name']} ({ds['votes']} votes, {ds['pairs']} pairs, {ds['versions']} versions, "
        f"serving v{ds['serving_version']})"
    )
    others = [d for d in facts["data_sets"] if d["name"] != ds["name"]]
    for other in others:
        print(f"  other data set: {other['name']} ({other['votes']} votes; sft {other['sft']}, base {other['base']})")
    if facts["unadopted_store"]:
        legacy = facts["unadopted_store"]
        print(
            f"  store from before data sets: {legacy['path']} ({legacy['votes']} votes by {legacy['models']}); "
            "start with those models to move it into their data set"
        )
    print(f"embedded packages installed: {facts['embedded_packages_installed']}")
    return 0


def cmd_options(args) -> int:
    print(options_table(), end="")
    return 0


def cmd_train(args) -> int:
    from .core import Playground
    from .models import model_folder
    from .training import exit_with_parent, run_round, watch

    if args.settings_json:  # the app's trainer: its complete settings, whatever flags or environment say here
        given = json.loads(args.settings_json)
        models, rounds = from_dict(ModelSettings, given["models"]), from_dict(RoundSettings, given["rounds"])
    else:
        models, rounds = settings_from(args, ModelSettings), settings_from(args, RoundSettings)
    playground = opened(Playground(models, rounds))
    sft_dir = model_folder(playground.preset.sft, playground.data_dir, models.trust_remote_code)
    where = dict(adapters_dir=playground.data_set.adapters_dir, sft_dir=sft_dir, settings=rounds)
    if args.watch:
        if args.parent_pid:
            exit_with_parent(args.parent_pid)
        watch(playground.store, **where, poll_seconds=args.poll, sft_hub_id=playground.sft_hub_id)
        return 0
    playground.store.recover_interrupted_rounds()
    version = run_round(playground.store, **where, force=True, sft_hub_id=playground.sft_hub_id)
    if version is None:
        print(
            "No pending feedback: nothing to train on. Vote, rate or write a better answer first (or `python -m "
            "playground simulate`)."
        )
        return 1
    serving = playground.store.serving_version()
    print(
        f"Version {version} is now serving."
        if serving == version
        else f"Version {version} is published; v{serving} keeps serving (it was chosen during the round)."
    )
    return 0


def cmd_versions(args) -> int:
    playground = playground_from(args)
    facts = playground.dashboard.facts()
    rows, serving = facts["versions"], facts["serving_version"]
    if args.json:
        print(
            json.dumps(
                {
                    "data_set": playground.data_set.name,
                    "serving_version": serving,
                    "sft_win_rate": facts["sft_win_rate"],
                    "sft_drift": facts["sft_drift"],
                    "versions": rows,
                },
                indent=2,
                default=str,
            )
        )
        return 0
    print(f"data set {playground.data_set.name}")
    if not rows:
        print("No adapter versions yet (version 0 = the SFT model serves the preference arm).")
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731

    def drift(d: dict | None) -> str:
        d = d or {}
        return (
            f"{fmt(d.get('mean_tokens'), '.1f'):>6} {fmt(d.get('distinct_2'), '.2f'):>5} "
            f"{fmt(d.get('kl_to_sft'), '.2f'):>6} {fmt(d.get('sft_perplexity'), '.2f'):>6}"
        )

    print(
        f"{'':2}{'ver':>4} {'parent':>6} {'state':<6} {'learned':>10} {'loss':>7} {'margin':>7} {'acc':>5} "
        f"{'votes won':>10} {'length':>6} {'dist2':>5} {'KL':>6} {'ppl':>6}  path"
    )

    def learned(row: dict) -> str:
        return "/".join(str(row["learned_from"][kind]) for kind in ("demonstrations", "pairs", "ratings"))

    def won(rate: dict | None) -> str:
        return f"{rate['rate']:.0%} of {rate['games']}" if rate else "-"

    print(
        f"{'*' if serving == 0 else ' ':2}{0:>4} {'':>6} {'ready':<6} {'':>10} {'':>7} {'':>7} {'':>5} "
        f"{won(facts['sft_win_rate']):>10} {drift(facts['sft_drift'])}  (the SFT model, no adapter)"
    )
    for row in rows:
        m = row["metrics"] or {}
        print(
            f"{'*' if row['serving'] else ' ':2}{row['version']:>4} {row['parent_version'] or 0:>6} "
            f"{row['state']:<6} {learned(row):>10} {fmt(m.get('final_loss'), '.3f'):>7} "
            f"{fmt(m.get('final_reward_margin'), '.3f'):>7} {fmt(m.get('final_reward_accuracy'), '.2f'):>5} "
            f"{won(row['vote_win_rate']):>10} {drift(row['drift'])}  {row['path']}"
            + (f"  ({row['reason']})" if row["reason"] else "")
        )
    print(
        "* = serving · learned: demonstrations/pairs/ratings its round trained on · drift on the fixed prompt set: "
        "mean answer length (tokens), distinct-2, KL to SFT (nats per answer), perplexity under SFT; - = not "
        "measured yet"
    )
    return 0


def cmd_evaluate(args) -> int:
    from . import drift
    from .models import model_folder

    rounds = settings_from(args, RoundSettings)
    playground = playground_from(args, rounds)
    plan = drift.plan_of(rounds)
    if plan is None:
        raise UserError("--eval-tokens is 0: drift evaluation is turned off.")
    store = playground.store
    if args.version is not None:
        if args.version and store.version(args.version) is None:
            raise StoreError(f"Adapter version {args.version} does not exist.")
        wanted = [args.version]
    else:
        wanted = store.versions_missing_eval(plan.key)
    sft_dir = model_folder(playground.preset.sft, playground.data_dir, playground.models.trust_remote_code)
    results = {version: drift.evaluate_stored_version(store, version, sft_dir, plan) for version in wanted}
    if args.json:
        print(json.dumps({"eval_set": plan.key, "prompts": len(plan.prompts), "evaluated": results}, indent=2))
    elif not results:
        print(
            f"Every version already has a drift evaluation on these {len(plan.prompts)} prompts "
            f"(`versions` lists them; --version N measures one again)."
        )
    else:
        for version, metrics in results.items():
            print(
                f"v{version}: "
                + (
                    "error: " + metrics["error"]
                    if "error" in metrics
                    else ", ".join(f"{k} {metrics[k]:.3f}" for k in drift.METRICS if metrics.get(k) is not None)
                    + f" ({metrics['seconds']:.1f} s)"
                )
            )
    return 1 if any("error" in m for m in results.values()) else 0


def cmd_explain(args) -> int:
    from .explain import explain, summary
    from .generation import AdapterError, Engine

    playground = playground_from(args)
    models = playground.models
    engine = Engine.for_scoring(
        playground.preset, playground.data_dir, trust_remote_code=models.trust_remote_code, device=models.device
    )
    try:
        result = explain(engine, playground.store, args.comparison, args.arm, args.version)
    except AdapterError as error:
        raise StoreError(str(error)) from error
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(summary(result).replace("**", "").replace("  \n", "\n"))
    print()
    print(f"{'reward':>8}  token")
    for token in result.tokens:
        print(f"{token['reward']:+8.4f}  {token['text']!r}")
    return 0


def cmd_rollback(args) -> int:
    playground = playground_from(args)
    playground.rollback(args.version)
    print(
        f"Version {args.version} is now the serving version of data set {playground.data_set.name}; "
        "a running app follows within seconds."
    )
    return 0


def cmd_export(args) -> int:
    playground = playground_from(args)
    what = "votes" if args.raw else args.what
    if what == "adapter":
        version = playground.store.serving_version() if args.version is None else args.version
        folder = playground.export_adapter(version, args.out)
        print(f"Wrote adapter v{version} with its model card to {folder}.")
        return 0
    _, n = playground.export(what, args.out)
    noun = {
        "votes": "votes with their answers",
        "pairs": "preference pairs (TRL conversational format)",
        "demonstrations": "demonstrations (TRL conversational messages format)",
        "ratings": "ratings (TRL unpaired preference format)",
    }[what]
    print(f"Wrote {n} {noun} to {args.out}.")
    return 0


def cmd_push(args) -> int:
    playground = playground_from(args)
    # The token comes from HF_TOKEN or `hf auth login`, never a flag (flags show in `ps`).
    from .publishing import server_token

    message = playground.push(
        server_token(), args.dataset_repo, args.model_repo, private=not args.public, version=args.version
    )
    print(message)
    return 0 if message.startswith("✓") else 1


def cmd_simulate(args) -> int:
    from .core import Playground
    from .data_sets import DataSet
    from .prompting import load_prompts
    from .simulate import Oracle, record_and_ablate, simulate, split_prompts, workspace

    oracle = Oracle.parse(args.oracle)
    prompts = load_prompts(args.prompts)
    heldout = load_prompts(args.heldout) if args.heldout else None
    if heldout is None:
        prompts, heldout = split_prompts(prompts)
    if args.heldout_limit:
        heldout = heldout[: args.heldout_limit]
    models = settings_from(args, ModelSettings)
    real_data_dir = models.resolved_data_dir()
    # Its own workspace, and no durable copy: simulated feedback never mixes with real feedback.
    models = replace(models, data_dir=str(workspace(real_data_dir)), persist="off", hub_dataset=None)
    # The simulated voter is one source by design: a cap per voter would only slice its votes into more rounds.
    rounds = replace(settings_from(args, RoundSettings), pairs_per_voter=0)
    playground = opened(Playground(models, rounds))
    playground.load_models()
    run = record_and_ablate if args.ablation else simulate
    # An ablation trains in this process, and trl prints its logs: stdout stays for the report alone.
    with contextlib.redirect_stdout(sys.stderr):
        result = run(
            playground,
            oracle,
            args.votes,
            prompts,
            heldout,
            mode=args.mode,
            sampling=settings_from(args, Sampling),
            seed=args.seed or 0,
            corrections=args.corrections,
            ratings=args.ratings,
        )
    result["workspace"] = str(playground.data_dir)
    if args.ablation:
        # The real data set's Stages view shows the latest ablation of its models.
        real = DataSet.for_models(real_data_dir, playground.preset.base, playground.preset.sft).open_store()
        real.save_ablation(
            {
                k: result[k]
                for k in (
                    "oracle",
                    "mode",
                    "votes",
                    "ablation",
                    "baseline",
                    "workspace",
                    "heldout_prompts",
                    "samples_per_prompt",
                    "max_new_tokens",
                )
            }
        )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    if args.ablation:
        from .ablation import table

        v = result["votes"]
        print(
            f"oracle {result['oracle']}: {v['votes']} {args.mode} votes, {v['corrections']} better answers, "
            f"{v['ratings']} ratings -> {result['feedback']['pairs']['total']} pairs; each objective trained "
            f"from the SFT model on all of it, {result['heldout_prompts']} held-out prompts x "
            f"{result['samples_per_prompt']} answers\n"
        )
        print(table(result))
        print(f"time: {result['seconds']}; workspace: {result['workspace']}")
        return 0
    b, a = result["before"], result["after"]
    print(
        f"oracle {result['oracle']}, {result['votes']['votes']} {args.mode} votes -> {result['votes']['pairs']} pairs, "
        f"{len(result['rounds'])} rounds, serving v{a['adapter_version']}"
    )
    print(f"held-out win rate of preference-tuned vs SFT: {b['win_rate']:.2f} before -> {a['win_rate']:.2f} after")
    print(
        f"mean chars  sft {a['mean_chars']['sft']:.0f}  pref {b['mean_chars']['pref']:.0f} -> {a['mean_chars']['pref']:.0f}"
    )
    print(
        f"fluency (perplexity under SFT) sft {a['fluency_sft_perplexity']['sft']:.2f}  "
        f"pref {a['fluency_sft_perplexity']['pref']:.2f}"
    )
    for r in result["rounds"]:
        last = r["steps"][-1] if r["steps"] else {}
        print(
            f"  round {r['round']}: {r['status']} v{r['version']} pairs {r['pairs_used']} {r['seconds']:.0f}s "
            f"loss {last.get('loss')} margin {last.get('reward_margin')} acc {last.get('reward_accuracy')}"
        )
    print(f"time: {result['seconds']}; workspace: {result['workspace']}")
    return 0


def data_set_of(args):
    """The data set the model options pick, without binding or restoring anything (unlike a Playground)."""
    from .data_sets import DataSet
    from .models import resolve_preset

    models = settings_from(args, ModelSettings)
    preset = resolve_preset(models.preset, models.base, models.sft)
    return models, DataSet.for_models(models.resolved_data_dir(), preset.base, preset.sft)


def cmd_stats(args) -> int:
    from .store import durable

    models, data_set = data_set_of(args)
    store = data_set.open_store()
    counts = store.counts()
    facts = {
        "data_set": data_set.name,
        "serving_version": store.serving_version(),
        **{k: counts[k] for k in ("prompts", "comparisons", "answers", "votes", "pairs", "rounds", "versions")},
        "pairs_pending": counts["pairs_pending"],
        "votes_by_kind": counts["votes_by_kind"],
    }
    target = models.resolved_persist()
    if target is not None:
        copy = durable.DurableCopy(store, data_set.name, target)
        facts["durable_copy"] = {
            "target": str(target),
            "pending": copy.pending(),
            "shards": len(durable.shards(copy.folder)),
        }
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"data set {facts['data_set']}: serving v{facts['serving_version']}")
    for key in ("prompts", "comparisons", "answers", "votes", "pairs", "pairs_pending", "rounds", "versions"):
        print(f"  {key:<14}{facts[key]:>8}")
    if "durable_copy" in facts:
        d = facts["durable_copy"]
        print(f"durable copy: {d['target']} ({d['shards']} shards, {d['pending']} changes not copied yet)")
    return 0


def cmd_restore(args) -> int:
    from .store import durable

    models, data_set = data_set_of(args)
    source = Path(args.source).expanduser()
    folder = source if durable.shards(source) else durable.data_set_folder(source, data_set.name)
    if not durable.shards(folder):
        found = sorted(p.parent.parent.name for p in source.glob("datasets/*/records/*.jsonl"))
        hint = (
            f" It holds data sets {sorted(set(found))}: pick their models with --preset/--base/--sft." if found else ""
        )
        print(f"error: {source} holds no durable copy of data set {data_set.name}.{hint}", file=sys.stderr)
        return EXIT_USAGE
    store = data_set.open_store()
    target = models.resolved_persist()
    # Restoring from the configured target continues its history; from elsewhere, the target starts afresh.
    same = target is not None and durable.data_set_folder(target, data_set.name).resolve() == folder.resolve()
    summary = durable.restore(store, folder, bind=same)
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    rows = summary["rows"]
    print(
        f"Restored data set {data_set.name} from {folder}: "
        + ", ".join(f"{n} {t}" for t, n in rows.items())
        + f"; serving v{store.serving_version()}."
    )
    return 0


BENCH_SUITES = {
    "generate": "generation",
    "dpo": "dpo",
    "stages": "stages",
    "loop": "loop",
    "startup": "startup",
    "panel": "panel",
    "persist": "persist",
    "explain": "explain",
    "load": "load",
}


def cmd_bench(args) -> int:
    """The suites live in bench/ (a sibling of this package in the repository): each prints one JSON object."""
    import importlib
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"bench.{BENCH_SUITES[args.suite]}")
    forwarded = [*args.bench_args, *(["--json"] if args.json else [])]
    if args.data_dir:
        forwarded += ["--data-dir", args.data_dir]
    module.main(forwarded)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m playground", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=parser_class())

    def command(name, func, help, *settings, **defaults):
        p = sub.add_parser(name, help=help, description=help)
        add_settings(p, *settings)
        p.set_defaults(func=func, **defaults)
        return p

    gen = command(
        "generate", cmd_generate, "three answers (base, SFT, preference-tuned) for one prompt", ModelSettings, Sampling
    )
    gen.add_argument("prompt", help="the (new) user message")
    gen.add_argument(
        "--history",
        metavar="FILE.json",
        default=None,
        help='earlier turns of a conversation: a JSON list of {"role": "user"|"assistant", "content": '
        "...} messages, alternating, from the user first to an assistant answer last; turns that "
        "do not fit a model's context are dropped, oldest first (dropped_turns in --json)",
    )
    gen.add_argument(
        "--version",
        type=int,
        default=None,
        help="answer with this adapter version (0 = none); default: the data set's serving version",
    )
    gen.add_argument("--json", action="store_true")

    inf = command("info", cmd_info, "resolved preset, model sources, data set, cache state", ModelSettings)
    inf.add_argument("--json", action="store_true")

    command("options", cmd_options, "every option as the README's Markdown table")

    tr = command(
        "train",
        cmd_train,
        "run one round now (--once), or keep training as feedback arrives (--watch)",
        ModelSettings,
        RoundSettings,
    )
    mode = tr.add_mutually_exclusive_group()
    mode.add_argument(
        "--watch", action="store_true", help="the trainer process: a round whenever enough feedback waits"
    )
    mode.add_argument("--once", action="store_true", help="one round on the pending feedback, then exit (default)")
    tr.add_argument("--poll", type=float, default=2.0, help="seconds between checks in --watch mode")
    tr.add_argument("--parent-pid", type=int, default=None, help="stop when this process (the app) is gone")
    tr.add_argument(
        "--settings-json",
        default=None,
        help='{"models": {...}, "rounds": {...}}: complete settings, replacing the options above '
        "(how the app starts its trainer)",
    )

    ver = command(
        "versions", cmd_versions, "adapter versions with their round metrics and vote win rates", ModelSettings
    )
    ver.add_argument("--json", action="store_true")

    xp = command(
        "explain",
        cmd_explain,
        "why this answer: DPO's implicit reward of a stored answer, token by token "
        "(β·(log π_θ − log π_SFT)), under the serving version",
        ModelSettings,
    )
    xp.add_argument("--comparison", type=int, required=True, help="the comparison (turn) id, as the page shows it")
    xp.add_argument("--arm", required=True, help="base, sft, pref or human; a duel's answers: a or b")
    xp.add_argument(
        "--version",
        type=int,
        default=None,
        help="score with this adapter version (0 = none); default: the data set's serving version",
    )
    xp.add_argument("--json", action="store_true")

    ev = command(
        "evaluate",
        cmd_evaluate,
        "measure drift (answer length, distinct-2, KL to SFT, perplexity under "
        "SFT) on the fixed prompt set, for the versions not measured yet (the trainer does this by itself)",
        ModelSettings,
        RoundSettings,
    )
    ev.add_argument("--version", type=int, default=None, help="measure this version (0 = the SFT model) again")
    ev.add_argument("--json", action="store_true")

    rb = command(
        "rollback", cmd_rollback, "make another adapter version the serving one (0 = no adapter)", ModelSettings
    )
    rb.add_argument("version", type=int)

    ex = command(
        "export",
        cmd_export,
        "preference pairs, demonstrations (better answers) or ratings in TRL's "
        "formats, raw votes, or an adapter version with its model card",
        ModelSettings,
    )
    ex.add_argument("--out", required=True, help="a .jsonl file; a folder for --what adapter")
    ex.add_argument(
        "--what",
        choices=("pairs", "votes", "demonstrations", "ratings", "adapter"),
        default="pairs",
        help="pairs: DPO (TRL preference format); votes: raw; demonstrations: the better answers, SFT "
        "(TRL messages format); ratings: single answers with a true (thumbs up) or false label, KTO "
        "(TRL unpaired format); adapter: a version with its model card",
    )
    ex.add_argument("--raw", action="store_true", help="the same as --what votes")
    ex.add_argument("--version", type=int, default=None, help="the adapter version (default: the serving one)")

    pu = command(
        "push",
        cmd_push,
        "push the pairs, demonstrations and ratings to a Hub dataset repo, and an adapter "
        "version to a model repo (token: HF_TOKEN or `hf auth login`)",
        ModelSettings,
    )
    pu.add_argument("--dataset-repo", required=True)
    pu.add_argument("--model-repo", default=None)
    pu.add_argument("--version", type=int, default=None, help="the adapter version (default: the serving one)")
    pu.add_argument("--public", action="store_true", help="create public repos (default: private)")

    sim = command(
        "simulate",
        cmd_simulate,
        "a rule-based voter drives the real loop (or an ablation of the stages); reports held-out win rates",
        ModelSettings,
        RoundSettings,
        Sampling,
        temperature=0.8,
        top_p=0.95,
    )
    sim.add_argument("--oracle", required=True, help="shorter | no-word:WORD | contains:WORD")
    sim.add_argument("--votes", type=int, default=64)
    sim.add_argument("--mode", choices=("pairwise", "best-of-three"), default="pairwise")
    sim.add_argument("--prompts", default=None, help="prompt file (JSONL); default assets/prompts.jsonl")
    sim.add_argument("--heldout", default=None, help="held-out prompt file; default every 4th prompt of --prompts")
    sim.add_argument("--heldout-limit", type=int, default=None, help="evaluate on the first N held-out prompts")
    sim.add_argument(
        "--corrections",
        type=int,
        default=0,
        metavar="K",
        help="every K-th turn the oracle also writes a better answer (a demonstration): for shorter, "
        "the first sentence of the answer it likes best; for contains:W / no-word:W, that answer "
        "with W added / removed; 0 = none",
    )
    sim.add_argument(
        "--ratings",
        action="store_true",
        help="the oracle also rates every answer on its own: thumbs up above its median score so far, down below it",
    )
    sim.add_argument(
        "--ablation",
        action="store_true",
        help="record the feedback on the SFT model's answers, then train it from that same start under "
        "each objective (dpo, sft, sft+dpo; with ratings also sft+dpo+kto) and compare them on the "
        "held-out prompts: win rate against SFT, perplexity under SFT, KL to SFT, mean length, "
        "round seconds",
    )
    sim.add_argument("--json", action="store_true")

    st = command(
        "stats",
        cmd_stats,
        "counts (prompts, comparisons, answers, votes, pairs, rounds, versions) and "
        "the serving version of the data set",
        ModelSettings,
    )
    st.add_argument("--json", action="store_true")

    rs = command(
        "restore",
        cmd_restore,
        "rebuild an empty local store (rows, serving version, adapters) from a durable copy",
        ModelSettings,
    )
    rs.add_argument(
        "--from",
        dest="source",
        required=True,
        help="the durable copy's folder (a --persist target, or one data set's folder in it)",
    )

    be = command("bench", cmd_bench, "benchmarks against plain baselines, one JSON object each (see bench/)")
    be.add_argument("suite", choices=tuple(BENCH_SUITES))
    be.add_argument("--json", action="store_true")
    be.add_argument("--data-dir", default=None)
    be.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the suite, e.g. --tokens 64")
    return parser


def configure_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    try:
        return args.func(args)
    except (ModelLoadError, PromptError, UserError, StoreError, AdapterError, RuntimeUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        while _opened:
            _opened.pop().close()
