"""The command line's parser: one subcommand per capability, each with the settings it takes (settings.py defines
every option once) and its own flags."""

from __future__ import annotations

import argparse

from ..options import add_settings, parser_class
from ..settings import ModelSettings, RoundSettings, Sampling
from .ablate_command import cmd_ablate
from .commands import (
    BENCH_SUITES,
    cmd_bench,
    cmd_evaluate,
    cmd_explain,
    cmd_generate,
    cmd_options,
    cmd_rollback,
    cmd_simulate,
    cmd_train,
)
from .data_commands import cmd_export, cmd_info, cmd_push, cmd_restore, cmd_stats, cmd_versions

DESCRIPTION = """`python -m playground ...`: every capability of the app, scriptable without a browser.

Every command takes the model options (they pick the data set: see data_sets.py); the settings are defined once
in settings.py, each from its flag, else its PLAYGROUND_* environment variable, else its default.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m playground", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
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

    ab = command(
        "ablate",
        cmd_ablate,
        "what each objective (dpo, sft, sft+dpo, ..., rm+rl) makes of this data set's recorded feedback, each trained "
        "from the SFT model on a copy and judged by an oracle on held-out prompts (the Stages view's button)",
        ModelSettings,
        RoundSettings,
    )
    ab.add_argument("--oracle", default="shorter", help="the judge of the held-out answers: shorter | plain | ...")
    ab.add_argument(
        "--heldout", default=None, help="held-out prompts (JSONL); default: assets/drift_prompts.jsonl, voted ones out"
    )
    ab.add_argument("--max-new-tokens", type=int, default=64, help="tokens of each held-out answer")
    ab.add_argument("--json", action="store_true")
    ab.add_argument("--settings-json", default=None, help="complete settings, as for train (how the app starts it)")

    ver = command(
        "versions", cmd_versions, "adapter versions with their round metrics and vote win rates", ModelSettings
    )
    ver.add_argument("--json", action="store_true")
    ver.add_argument(
        "--recheck",
        type=int,
        metavar="N",
        default=None,
        help="check version N's files again: a version marked bad whose files read fine becomes good again "
        "(serve it with rollback)",
    )

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
    ex.add_argument("--out", required=True, help="a .jsonl file; a folder for --what adapter and reward-model")
    ex.add_argument(
        "--what",
        choices=("pairs", "votes", "demonstrations", "ratings", "adapter", "reward-model"),
        default="pairs",
        help="pairs: DPO (TRL preference format); votes: raw; demonstrations: the better answers, SFT "
        "(TRL messages format); ratings: single answers with a true (thumbs up) or false label, KTO "
        "(TRL unpaired format); adapter: a version with its model card; reward-model: a version's reward model "
        "(PEFT, with its scalar head) with its model card",
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
    pu.add_argument(
        "--reward-model-repo", default=None, help="a model repo for the version's reward model (PEFT, scalar head)"
    )
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
    sim.add_argument("--oracle", required=True, help="shorter | plain | no-word:WORD | contains:WORD")
    sim.add_argument("--votes", type=int, default=64)
    sim.add_argument("--mode", choices=("pairwise", "best-of-three"), default="pairwise")
    sim.add_argument(
        "--vote-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="the voter's pace: it reads each turn's answers S seconds before it votes, while the trainer keeps "
        "training (a person's reading time); 0 = votes as soon as the answers are written, like a class voting at once",
    )
    sim.add_argument("--prompts", default=None, help="prompt file (JSONL); default assets/prompts.jsonl")
    sim.add_argument(
        "--heldout",
        default=None,
        help="held-out prompt file (its prompts also in --prompts are dropped); default every 4th prompt of --prompts",
    )
    sim.add_argument(
        "--heldout-limit", type=int, default=None, help="evaluate on N held-out prompts spread evenly over them"
    )
    sim.add_argument(
        "--heldout-samples",
        type=int,
        default=1,
        metavar="K",
        help="answers per held-out prompt and arm, each with its own seed (the standard error shrinks with more "
        "prompts more than with more samples: a prompt's answers resemble each other)",
    )
    sim.add_argument(
        "--corrections",
        type=int,
        default=0,
        metavar="K",
        help="every K-th turn the oracle also writes a better answer (a demonstration): for shorter, "
        "the first sentence of the answer it likes best; for plain, its first two sentences; for contains:W / "
        "no-word:W, that answer "
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
