"""The commands about a data set and what it holds: info, versions, stats, export, push, restore."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import reports
from .session import EXIT_USAGE, data_set_of, playground_from


def info(args) -> dict:
    from ..data_sets import legacy_store, list_data_sets
    from ..models import EMBEDDED, PRESETS, cached_copy, describe_source, embedded_available, needs_conversion

    playground = playground_from(args)
    preset, data_dir = playground.preset, playground.data_dir
    models = {}
    for role, spec in (("base", preset.base), ("sft", preset.sft)):
        cached = cached_copy(spec, data_dir)
        models[role] = {
            "spec": spec,
            "source": describe_source(spec),
            "converted_copy": str(cached) if cached else None,
            "needs_conversion": needs_conversion(spec) and not cached,
        }
    counts = playground.store.counts()
    from ..models import models_dir
    from ..runtimes.onnx.calibration import cpu_identity, cpu_key, recorded

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
        # What `--precision auto` serves the SFT model with on this CPU (measured on the first start here).
        "cpu": cpu_identity(),
        "calibration": recorded(models_dir(data_dir)).get(cpu_key(), {}),
    }


def cmd_info(args) -> int:
    facts = info(args)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(reports.info_text(facts))
    return 0


def cmd_versions(args) -> int:
    playground = playground_from(args)
    if args.recheck is not None:
        problem = playground.recheck(args.recheck)
        if problem:
            print(f"Version {args.recheck} is not servable: {problem}.", file=sys.stderr)
            return 1
        print(f"Version {args.recheck}'s files read fine: it is good (serve it with `rollback {args.recheck}`).")
        return 0
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
    print(reports.versions_text(playground.data_set.name, facts))
    return 0


def cmd_export(args) -> int:
    playground = playground_from(args)
    what = "votes" if args.raw else args.what
    if what == "adapter":
        version = playground.store.serving_version() if args.version is None else args.version
        folder = playground.export_adapter(version, args.out)
        print(f"Wrote adapter v{version} with its model card to {folder}.")
        return 0
    if what == "reward-model":
        version = playground.store.serving_version() if args.version is None else args.version
        folder = playground.export_reward_model(version, args.out)
        print(f"Wrote the reward model of v{version} with its model card to {folder}.")
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
    from ..publishing import server_token

    message = playground.push(
        server_token(),
        args.dataset_repo,
        args.model_repo,
        private=not args.public,
        version=args.version,
        reward_model_repo=args.reward_model_repo,
    )
    print(message)
    return 0 if message.startswith("✓") else 1


def cmd_stats(args) -> int:
    from ..store import durable

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
    print(reports.stats_text(facts))
    return 0


def cmd_restore(args) -> int:
    from ..store import durable

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
