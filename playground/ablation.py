"""What each stage contributes: the same recorded feedback, trained from the same start under each objective, and
each result measured on held-out prompts (`simulate --ablation`).

The simulated voter first records its feedback on the SFT model's own answers (no trainer runs meanwhile, so every
objective starts from version 0 and sees the same data). Then, for each objective of `training.OBJECTIVES` (`dpo`:
preference only; `sft`: instruction only; `sft+dpo`: both; `sft+dpo+kto`: both and the ratings; `rm+rl`: preference
through a reward model and RL; `sft+rm+rl`: the SFT stage first, then that), a copy of that
store trains one round of only that objective's stages, in this process, with the real round code. An objective one
of whose stages has no feedback of its kind recorded is skipped, with a note in its place (`{"skipped": why}`): it
would train what a smaller objective trains, under a name that claims more; so is one whose round made no version.
Each version it makes, and the SFT model, answer every held-out prompt `SAMPLES` times (temperature 1, the same
seeds for all of them: drift.py's sampler), and per objective:
- win_rate: the oracle's verdict on each answer against the SFT model's answer to the same prompt and seed (ties ½),
  with `ties` (their share), `win_rate_decided` and the standard errors beside it (verdicts.py says what they mean);
- ppl_sft: the perplexity of its answers under the SFT model; kl: KL to the SFT model, nats per answer (drift.py);
- mean_length: answer length in tokens; seconds: the round, from its start to its published version;
- reward_model_agreement (the RL objectives): of the held-out answer pairs the oracle decides, the share the
  version's reward model orders as the oracle does (`reward_model_agreement`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from . import drift, reward_models, verdicts
from .models import load_policy
from .settings import RoundSettings
from .store import Store
from .training import run_round
from .training.examples import KIND_OF, OBJECTIVES

log = logging.getLogger(__name__)
SAMPLES = 2  # answers per held-out prompt and model (different seeds)
SKIPPED = "skipped"  # an objective's entry without figures: {SKIPPED: why}
NO_VERSION = "its round made no version"
# The figures both tables show (`table` here, the Training tab's Stages view), in their order and format.
FIGURES = (
    ("win_rate", ".2f"),
    ("ties", ".0%"),
    ("ppl_sft", ".2f"),
    ("kl", ".2f"),
    ("mean_length", ".1f"),
    ("reward_model_agreement", ".2f"),
    ("seconds", ".0f"),
)


def skipped_objectives(store: Store) -> dict[str, str]:
    """{objective: why it cannot train} for each objective a stage of which has no feedback of its kind recorded."""
    totals = store.feedback_totals()
    notes = {}
    for name, stages in OBJECTIVES.items():
        missing = [KIND_OF[stage] for stage in stages if not totals[KIND_OF[stage]]["total"]]
        if missing:
            notes[name] = f"no {' or '.join(missing)} recorded"
    return notes


def cells(figures: dict) -> list[str]:
    """An objective's `FIGURES` as table cells, or its note and empty cells when it was skipped."""
    if SKIPPED in figures:
        return [f"skipped: {figures[SKIPPED]}"] + ["–"] * (len(FIGURES) - 1)
    # An ablation saved before a figure existed shows it as not measured.
    return ["–" if figures.get(key) is None else format(figures[key], spec) for key, spec in FIGURES]


def copy_store(store: Store, folder: Path) -> Store:
    """A copy of the store's file in `folder` (SQLite's online backup: a consistent snapshot)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / store.path.name
    source, copy = sqlite3.connect(store.path), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return Store(target)


def sample(sft_dir: str, adapter: str | None, plan: drift.EvalPlan) -> list[dict]:
    """The answers of the SFT model (with the adapter at `adapter`, if any) to the plan's prompts, with their
    log-probabilities under it and under the SFT model."""
    model, tokenizer = load_policy(sft_dir)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return drift.sample_and_score(model, tokenizer, plan, adapter=bool(adapter))


def figures(samples: list[dict], baseline: list[dict], oracle, max_new_tokens: int) -> dict:
    """An objective's figures from its samples and the SFT model's samples of the same prompts and seeds."""
    outcomes = [oracle.compare(mine["text"], theirs["text"]) for mine, theirs in zip(samples, baseline)]
    prompts = len(samples) // SAMPLES  # the plan is the held-out prompts SAMPLES times over
    summary = drift.summarize(samples, max_new_tokens)
    return {
        **verdicts.summarize(outcomes, [i % prompts for i in range(len(outcomes))]),
        "ppl_sft": summary["sft_perplexity"],
        "kl": summary["kl_to_sft"],
        "mean_length": summary["mean_tokens"],
        "distinct_2": summary["distinct_2"],
    }


def finished(sample: dict, max_new_tokens: int | None) -> bool:
    """Whether a drift sample ended before the token limit (the reward model reads a cut one with its turn open)."""
    return not max_new_tokens or sample.get("tokens", 0) < max_new_tokens


def reward_model_agreement(
    sft_dir: str,
    version_path: str,
    prompts,
    answers: list[dict],
    baseline: list[dict],
    oracle,
    max_new_tokens: int | None = None,
) -> float | None:
    """Of the held-out answer pairs (the version's answer and the SFT model's to the same prompt and seed) the oracle
    decides, the share the version's reward model orders as the oracle does: how far the surrogate RL optimized
    stands for the truth on answers it never saw. None when the oracle decided none."""
    base, tokenizer = reward_models.load_base(sft_dir)
    model = reward_models.attach(base, reward_models.folder_of(version_path))
    conversations = lambda samples: [  # noqa: E731
        ([{"role": "user", "content": p}], s["text"], finished(s, max_new_tokens)) for p, s in zip(prompts, samples)
    ]
    mine, theirs = (reward_models.score(model, tokenizer, conversations(x)) for x in (answers, baseline))
    agreed = [
        (m > t) == (verdict == "a")
        for m, t, verdict in zip(
            mine, theirs, (oracle.compare(a["text"], b["text"]) for a, b in zip(answers, baseline))
        )
        if verdict != "tie"
    ]
    return sum(agreed) / len(agreed) if agreed else None


def ablate(
    store: Store,
    sft_dir: str,
    settings: RoundSettings,
    oracle,
    heldout: list[str],
    max_new_tokens: int,
    folder: Path,
    seed: int = 0,
    objectives: list[str] | None = None,
    progress=None,
) -> dict:
    """{"ablation": {objective: figures, or {SKIPPED: why}}, "baseline": the SFT model's figures, ...}: each objective
    (default: all of `OBJECTIVES`) trained from the same start on a copy of `store` (under `folder/<objective>`),
    measured on the held-out prompts. `progress(done, total, current)`: called before each objective and at the end.
    Each copy forgets what rounds trained on (all of its feedback pending, version 0 serving), so every objective
    starts from the SFT model, also on a data set that has trained rounds."""
    objectives = objectives or list(OBJECTIVES)
    progress = progress or (lambda done, total, current: None)
    notes = skipped_objectives(store)
    plan = drift.EvalPlan(tuple(heldout) * SAMPLES, max_new_tokens, seed)
    # Every piece of feedback in one round; no drift evaluation (this measures its own, on the held-out prompts).
    one_round = RoundSettings(**(settings.as_dict() | {"max_new_pairs": 10**9, "pairs_per_voter": 0, "eval_tokens": 0}))
    started = time.perf_counter()
    baseline = sample(sft_dir, None, plan)
    results, made = {}, {}
    for done, name in enumerate(objectives):
        progress(done, len(objectives), name)
        if name in notes:
            results[name] = {SKIPPED: notes[name]}
            log.info("Ablation %s: skipped, %s.", name, notes[name])
            continue
        copy = copy_store(store, folder / name)
        copy.forget_training()
        began = time.perf_counter()
        version = run_round(copy, copy.root / "adapters", sft_dir, one_round, force=True, stages=OBJECTIVES[name])
        seconds = time.perf_counter() - began
        if version is None:
            results[name] = {SKIPPED: NO_VERSION}
            log.warning("Ablation %s: %s.", name, NO_VERSION)
            continue
        row = copy.version(version)
        answers = sample(sft_dir, row["path"], plan)
        results[name] = figures(answers, baseline, oracle, max_new_tokens) | {
            "seconds": seconds,
            "learned_from": row["learned_from"],
            "steps": (row["metrics"] or {}).get("steps"),
        }
        if "grpo" in OBJECTIVES[name]:
            results[name]["reward_model_agreement"] = reward_model_agreement(
                sft_dir, row["path"], plan.prompts, answers, baseline, oracle, max_new_tokens
            )
        made[name] = row["path"]
        log.info("Ablation %s: %s", name, {k: round(v, 3) for k, v in results[name].items() if isinstance(v, float)})
    progress(len(objectives), len(objectives), None)
    return {
        "ablation": results,
        "baseline": figures(baseline, baseline, oracle, max_new_tokens) | {"seconds": 0.0},
        "heldout_prompts": len(heldout),
        "samples_per_prompt": SAMPLES,
        "max_new_tokens": max_new_tokens,
        "adapters": made,
        "feedback": store.feedback_totals(),
        "seconds": time.perf_counter() - started,
    }


def table(result: dict) -> str:
    """The ablation as a Markdown table (the README and docs/performance.md quote it)."""
    lines = [
        "| objective | held-out win rate vs SFT | ties | perplexity under SFT | KL to SFT (nats/answer) | "
        "mean length (tokens) | reward model agrees with the oracle | round seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("SFT model (v0)", result["baseline"])] + list(result["ablation"].items())
    for name, f in rows:
        lines.append(f"| {name} | {' | '.join(cells(f))} |")
    return "\n".join(lines) + "\n"
