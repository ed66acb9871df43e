"""What each `python -m playground` command does, through the front door (core.Playground); the text they print
without --json is in reports.py."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..options import from_dict, options_table, settings_from
from ..prompting import PromptError
from ..settings import ModelSettings, RoundSettings, Sampling
from ..store import StoreError
from ..votes import is_cut
from . import reports
from .session import opened, playground_from


def read_history(path: str) -> list[dict]:
    """A conversation's earlier turns from a JSON file: a list of {"role", "content"} messages (check_history)."""
    from ..prompting import check_history

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
    from ..generation import AdapterError
    from ..prompting import check_prompt

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
    messages = [*history, {"role": "user", "content": args.prompt}]
    written = [arm for arm, answer in answers.items() if answer.text.strip()]
    scored = playground.judging.score(
        [(messages, answers[arm].text, not is_cut(answers[arm].finish_reason)) for arm in written]
    )
    for arm, answer in answers.items():  # the serving reward model's score (reward_version 0: none yet)
        answer.reward_version = scored[0] if scored else 0
        answer.reward = dict(zip(written, scored[1])).get(arm) if scored else None
    if args.json:
        report = {arm: a.to_dict() for arm, a in answers.items()}
        report |= {
            "adapter_version": playground.engine.adapter_version,
            "serving_version": serving,
            "data_set": playground.data_set.name,
            "history_turns": len(history) // 2,
            "runtime": playground.engine.runtime,
            "runtimes": playground.engine.describe(),
            "precisions": playground.engine.precisions(),
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        reports.answers_text(
            answers,
            data_set=playground.data_set.name,
            adapter_version=playground.engine.adapter_version,
            serving=serving,
            turns=len(history) // 2,
        )
    )
    return 0


def cmd_options(args) -> int:
    print(options_table(), end="")
    return 0


def cmd_train(args) -> int:
    from ..core import Playground
    from ..models import model_folder
    from ..training import exit_with_parent, run_round, watch

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


def cmd_evaluate(args) -> int:
    from .. import drift
    from ..models import model_folder

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
    else:
        print(reports.evaluation_text(results, drift.METRICS, len(plan.prompts)))
    return 1 if any("error" in m for m in results.values()) else 0


def cmd_explain(args) -> int:
    from ..explain import explain, summary
    from ..generation import AdapterError, Engine

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
    print(reports.explanation_text(summary(result), result.tokens))
    return 0


def cmd_rollback(args) -> int:
    playground = playground_from(args)
    playground.rollback(args.version)
    print(
        f"Version {args.version} is now the serving version of data set {playground.data_set.name}; "
        "a running app follows within seconds."
    )
    return 0


def cmd_simulate(args) -> int:
    from ..core import Playground
    from ..data_sets import DataSet
    from ..prompting import load_prompts
    from ..simulate import (
        Oracle,
        check_pace,
        choose_heldout,
        record_and_ablate,
        rl_prompts_without,
        simulate,
        workspace,
    )

    oracle = Oracle.parse(args.oracle)
    if args.heldout_samples < 1:
        raise UserError(f"--heldout-samples must be at least 1, not {args.heldout_samples}.")
    check_pace(args.vote_seconds)
    prompts, heldout, overlap = choose_heldout(
        load_prompts(args.prompts), load_prompts(args.heldout) if args.heldout else None, args.heldout_limit
    )
    models = settings_from(args, ModelSettings)
    real_data_dir = models.resolved_data_dir()
    # Its own workspace, and no durable copy: simulated feedback never mixes with real feedback.
    models = replace(models, data_dir=str(workspace(real_data_dir)), persist="off", hub_dataset=None)
    # The simulated voter is one source by design: a cap per voter would only slice its votes into more rounds.
    rounds = replace(settings_from(args, RoundSettings), pairs_per_voter=0)
    if rounds.preference_route == "rlhf" or args.ablation:  # RL never trains on a held-out prompt
        rounds = replace(rounds, rl_prompts=str(rl_prompts_without(heldout, rounds, Path(models.data_dir))))
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
            vote_seconds=args.vote_seconds,
            **({} if args.ablation else {"heldout_samples": args.heldout_samples}),
        )
        if not args.ablation and rounds.preference_route == "rlhf" and rounds.checkpoint_steps:
            from ..overoptimization import after_simulation

            result["overoptimization"] = after_simulation(playground, oracle, heldout, settings_from(args, Sampling))
    result["workspace"] = str(playground.data_dir)
    result["heldout_overlap_dropped"] = overlap
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
    if "overoptimization" in result:
        real = DataSet.for_models(real_data_dir, playground.preset.base, playground.preset.sft).open_store()
        real.save_overoptimization(result["overoptimization"] | {"workspace": result["workspace"]})
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    if args.ablation:
        from ..ablation import table

        print(reports.ablation_text(result, args.mode, table(result)))
    else:
        print(reports.simulation_text(result, args.mode))
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
    "soak": "soak",
    "votes": "votes",
    "routes": "routes",
    "agreement": "agreement",
}


def cmd_bench(args) -> int:
    """The suites live in bench/ (a sibling of this package in the repository): each prints one JSON object."""
    import importlib

    try:
        module = importlib.import_module(f"bench.{BENCH_SUITES[args.suite]}")
    except ModuleNotFoundError as error:
        if error.name != "bench":
            raise
        raise UserError(
            "The bench suites live in the repository's bench/ folder: run `python -m playground bench ...` from the "
            "repository root."
        ) from error
    forwarded = [*args.bench_args, *(["--json"] if args.json else [])]
    if args.data_dir:
        forwarded += ["--data-dir", args.data_dir]
    module.main(forwarded)
    return 0
