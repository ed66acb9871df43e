"""A rule-based voter that drives the real loop (generation → votes → trainer process → hot swap) and then
measures, on held-out prompts, whether the preference-tuned model moved the way the votes asked.

The oracles are in oracles.py (`shorter`, `plain`, `no-word:WORD`, `contains:WORD`); equal scores are a tie (no DPO
pair). Besides voting, the voter can give the other two kinds of feedback: every K-th turn a better answer (`corrections`: the answer it likes best, improved by its rule:
`Oracle.improve`), and single ratings of every answer (`ratings`: 👍 above the median score of the answers it has
seen so far, 👎 below it, none at the median). `simulate --ablation` (ablation.py) trains what it recorded under
each objective.

The voter's pace (`--vote-seconds S`): it reads each turn's answers for S seconds before it votes, as a person would,
while the trainer process goes on training; 0 (the default) votes as soon as the answers are written, like a class
voting at once.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

from . import drift, verdicts
from .core import Playground
from .errors import UserError
from .oracles import Oracle, Rater
from .processes import wait_for
from .settings import Sampling

log = logging.getLogger(__name__)
SESSION = "simulated-voter"


def split_prompts(prompts: list[dict], every: int = 4) -> tuple[list[dict], list[dict]]:
    """Held-out = every 4th prompt (the file is grouped by category, so each category is represented)."""
    return [p for i, p in enumerate(prompts) if i % every], [p for i, p in enumerate(prompts) if not i % every]


def same_text(prompt: str) -> str:
    """What two prompts share when they are the same question: the text stripped, case-folded, spaces collapsed."""
    return " ".join(prompt.split()).casefold()


def choose_heldout(
    prompts: list[dict], heldout: list[dict] | None, limit: int | None = None
) -> tuple[list[dict], list[dict], int]:
    """(voting prompts, held-out prompts, held-out prompts dropped as overlap). Without a held-out file, every 4th
    prompt (`split_prompts`). A held-out prompt the voter also votes on would measure what it was trained on: it is
    dropped with a warning, and none left is an error. `limit`: that many held-out prompts spread evenly over them,
    the middle one of each of `limit` equal slices, in their order (the files are grouped by category, so the first N
    would be a few categories)."""
    if limit is not None and limit < 1:
        raise UserError(f"--heldout-limit must be at least 1, not {limit}.")
    if heldout is None:
        prompts, heldout = split_prompts(prompts)
    voted = {same_text(p["prompt"]) for p in prompts}
    kept = [p for p in heldout if same_text(p["prompt"]) not in voted]
    dropped = len(heldout) - len(kept)
    if not kept:
        raise UserError(f"Every one of the {dropped} held-out prompts is also a prompt to vote on: nothing to measure.")
    if dropped:
        log.warning(
            "%d of %d held-out prompts are also prompts to vote on; they are not measured.", dropped, len(heldout)
        )
    if limit and limit < len(kept):
        kept = [kept[(2 * i + 1) * len(kept) // (2 * limit)] for i in range(limit)]
    return prompts, kept, dropped


def check_pace(vote_seconds: float) -> float:
    """The voter's seconds of reading before each vote: a finite number, 0 or more."""
    if not math.isfinite(vote_seconds) or vote_seconds < 0:
        raise UserError(f"--vote-seconds must be 0 or more seconds, not {vote_seconds}.")
    return vote_seconds


def read_answers(seconds: float) -> None:
    """The voter reads the turn's answers before it votes (the trainer process keeps training meanwhile)."""
    time.sleep(seconds)


def collect_votes(
    playground: Playground,
    oracle: Oracle,
    votes: int,
    prompts: list[dict],
    mode: str,
    sampling: Sampling,
    rng: random.Random,
    *,
    corrections: int = 0,
    ratings: bool = False,
    follow: bool = True,
    vote_seconds: float = 0.0,
) -> dict:
    """`votes` turns, each voted on; every `corrections`-th turn also gets a better answer, and with `ratings` every
    answer a single rating. `follow`: serve each new version as it appears (off: every answer is the SFT model's).
    `vote_seconds`: the voter reads each turn's answers that long before it votes (`read_answers`)."""
    check_pace(vote_seconds)
    counts = {"votes": 0, "pairs": 0, "ties": 0, "corrections": 0, "ratings": 0}
    rater = Rater(oracle)
    for i in range(votes):
        row = prompts[i % len(prompts)]
        settings = Sampling(sampling.temperature, sampling.top_p, sampling.max_new_tokens, rng.randrange(2**31))
        if mode == "pairwise":
            *_, (answers, recorded) = playground.duel(row["prompt"], settings, SESSION, row.get("category"))
            if vote_seconds:
                read_answers(vote_seconds)
            outcome = oracle.compare(answers["a"].text, answers["b"].text)
            receipt = playground.store.vote_pairwise(
                SESSION, recorded.comparison_id, recorded.answer_ids["a"], recorded.answer_ids["b"], outcome
            )
            counts["ties"] += outcome == "tie"
        else:
            *_, (answers, recorded) = playground.compare(row["prompt"], settings, SESSION, row.get("category"))
            if vote_seconds:
                read_answers(vote_seconds)
            order = oracle.rank({key: answer.text for key, answer in answers.items()})
            receipt = playground.store.vote_best(
                SESSION, recorded.comparison_id, [recorded.answer_ids[key] for key in order]
            )
        counts["votes"] += 1
        counts["pairs"] += receipt.pairs_created
        if follow:  # as the page does after a vote: the serving reward model judges it before a round can take it
            playground.judging.judge_pending()
        texts = {key: answer.text for key, answer in answers.items()}
        if corrections and (i + 1) % corrections == 0:
            better = oracle.improve(texts[oracle.rank(texts)[0]])
            if better:
                counts["pairs"] += playground.store.add_correction(
                    SESSION, recorded.comparison_id, better
                ).pairs_created
                counts["corrections"] += 1
        if ratings:
            for key, text in texts.items():
                label = rater.rate(text)
                if label is not None:
                    playground.store.vote_thumb(SESSION, recorded.answer_ids[key], label)
                    counts["ratings"] += 1
        serving = playground.sync_adapter() if follow else playground.engine.adapter_version
        log.info("vote %d/%d: +%d pairs (serving v%d)", i + 1, votes, receipt.pairs_created, serving)
    return counts


def evaluate(
    playground: Playground, oracle: Oracle, heldout: list[dict], sampling: Sampling, seed: int, samples: int = 1
) -> dict:
    """Preference-tuned vs SFT on held-out prompts, `samples` answers per prompt (seeds `seed + i + k * prompts`),
    the two arms with the same seed: the oracle's verdicts (verdicts.summarize: the win rate with ties ½, the tie
    share, the win rate among decided comparisons, their standard errors) and each arm's answers' mean length,
    perplexity under the SFT model and distinct-2; `ppl_ratio`: the preference-tuned answers' perplexity under SFT
    over the SFT answers' own (1: as fluent as SFT to SFT's eye; higher: stranger text)."""
    if samples < 1:
        raise UserError(f"--heldout-samples must be at least 1, not {samples}.")
    outcomes, prompt_of = [], []
    lengths, tokens, nll, cut = ({"sft": [], "pref": []} for _ in range(4))
    texts = []
    for k in range(samples):
        for i, row in enumerate(heldout):
            settings = Sampling(
                sampling.temperature, sampling.top_p, sampling.max_new_tokens, seed + i + k * len(heldout)
            )
            answers = playground.engine.generate(row["prompt"], settings, arms=("sft", "pref"))
            texts.append(
                {"prompt": row["prompt"], "seed": settings.seed} | {a: answers[a].text for a in ("sft", "pref")}
            )
            outcomes.append(oracle.compare(answers["pref"].text, answers["sft"].text))
            prompt_of.append(i)
            for arm in ("sft", "pref"):
                lengths[arm].append(len(answers[arm].text))
                tokens[arm].append(answers[arm].new_tokens)
                cut[arm].append(answers[arm].finish_reason == "length")
                value = playground.engine.scoring.sft_nll(row["prompt"], answers[arm].text)
                if value is not None:
                    nll[arm].append(value)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    perplexity = {arm: (math.exp(mean(v)) if v else None) for arm, v in nll.items()}
    return {
        **verdicts.summarize(outcomes, prompt_of),
        "prompts": len(heldout),
        "samples_per_prompt": samples,
        "mean_chars": {arm: mean(v) for arm, v in lengths.items()},
        "mean_new_tokens": {arm: mean(v) for arm, v in tokens.items()},
        # Answers cut at --max-new-tokens: between two cut answers `shorter` compares characters per token, not
        # where the model chose to stop.
        "hit_limit": {arm: mean(v) for arm, v in cut.items()},
        "fluency_sft_perplexity": perplexity,
        "ppl_ratio": perplexity_ratio(perplexity),
        # Per answer (each answer's distinct word bigrams over its bigrams, averaged): what a degenerate answer
        # ("Malt:) Malt:)") drags down. Over all answers together (`_corpus`) it also falls with how alike the
        # answers to different prompts are, which the SFT model's own answers already are (about 0.86 on 16 prompts).
        "distinct_2": {arm: per_answer_distinct_2([t[arm] for t in texts]) for arm in ("sft", "pref")},
        "distinct_2_corpus": {arm: drift.distinct_n([t[arm] for t in texts], 2) for arm in ("sft", "pref")},
        "adapter_version": playground.engine.adapter_version,
        "answers": texts,  # same seeds before and after: what changed is the adapter's doing
    }


def perplexity_ratio(perplexity: dict) -> float | None:
    """The preference-tuned answers' perplexity under SFT / the SFT answers' own; None where either is unmeasured."""
    pref, sft = perplexity.get("pref"), perplexity.get("sft")
    return pref / sft if pref is not None and sft else None


def per_answer_distinct_2(texts: list[str]) -> float | None:
    """The mean of each answer's distinct-2 (answers of fewer than two words left out); None without any."""
    values = [v for v in (drift.distinct_n([t], 2) for t in texts) if v is not None]
    return sum(values) / len(values) if values else None


def fluency(after: dict, drift_of: dict) -> dict:
    """What the votes cost in fluency, after the rounds: the held-out `ppl_ratio`, the preference-tuned answers'
    distinct-2, the serving version's KL to SFT as the trainer measured it on the drift prompts (None: not
    measured), and per arm the mean new tokens and the share cut at the token limit."""
    return {
        "ppl_ratio": after["ppl_ratio"],
        "distinct_2": after["distinct_2"]["pref"],
        "kl": drift_of.get(f"v{after['adapter_version']}", {}).get("kl_to_sft"),
        "mean_new_tokens": after["mean_new_tokens"],
        "hit_limit": after["hit_limit"],
    }


def simulate(
    playground: Playground,
    oracle: Oracle,
    votes: int,
    prompts: list[dict],
    heldout: list[dict],
    mode: str = "pairwise",
    sampling: Sampling | None = None,
    seed: int = 0,
    round_timeout: float = 1800,
    *,
    corrections: int = 0,
    ratings: bool = False,
    heldout_samples: int = 1,
    vote_seconds: float = 0.0,
) -> dict:
    """Held-out figures before, `votes` turns of the oracle's feedback while the trainer runs (each read for
    `vote_seconds` before its vote), one last round on what is left, the held-out figures after. seconds: `voting`
    (the turns, reading included), `loop` (the turns and the last round: what a person waits for), `evaluation`
    (both held-out measures), `total`."""
    check_pace(vote_seconds)
    sampling = sampling or Sampling(temperature=0.8, top_p=0.95, max_new_tokens=128)
    kinds = playground.round_settings.feedback_kinds()
    plan = drift.plan_of(playground.round_settings)  # the trainer's drift evaluation of each version
    rng = random.Random(seed)
    started = time.perf_counter()
    before = evaluate(playground, oracle, heldout, sampling, 10_000 + seed, heldout_samples)
    loop_started = time.perf_counter()
    playground.start_trainer()
    try:
        counts = collect_votes(
            playground,
            oracle,
            votes,
            prompts,
            mode,
            sampling,
            rng,
            corrections=corrections,
            ratings=ratings,
            vote_seconds=vote_seconds,
        )
        voting_s = time.perf_counter() - loop_started
        # The votes left over after the last automatic round get one final round, so every vote counts.
        if any(playground.store.pending_counts(kinds).values()):
            playground.train_now()
        settled = wait_for(
            lambda: (
                not any(playground.store.pending_counts(kinds).values()) and playground.store.running_round() is None
            ),
            timeout=round_timeout,
            interval=2,
        )
        loop_s = time.perf_counter() - loop_started
        if not settled:
            log.warning("The trainer did not finish within %.0f s; evaluating the version serving now.", round_timeout)
        # The trainer measures each version's drift right after publishing it: the last one's is worth the wait.
        serving = playground.store.serving_version()
        if settled and plan and serving:
            wait_for(
                lambda: serving not in playground.store.versions_missing_eval(plan.key),
                timeout=round_timeout,
                interval=2,
            )
    finally:
        playground.stop_trainer()
    playground.sync_adapter()
    after_started = time.perf_counter()
    after = evaluate(playground, oracle, heldout, sampling, 10_000 + seed, heldout_samples)
    evaluation_s = (loop_started - started) + (time.perf_counter() - after_started)
    rounds = [
        {
            "round": r["id"],
            "status": r["status"],
            "version": r["version"],
            "pairs_used": r["pairs_used"],
            "seconds": (r["finished_at"] or time.time()) - r["started_at"],
            "error": r["error"],
            "learned_from": r["learned_from"],
            "steps": [
                {k: s[k] for k in ("step", "stage", "loss", f"loss_{s['stage']}", "reward_margin", "reward_accuracy")}
                for s in playground.store.round_steps(r["id"])
            ],
        }
        for r in playground.store.rounds()
    ]
    measured = {
        e["version"]: e["metrics"] for e in playground.store.version_evals() if plan and e["eval_set"] == plan.key
    }
    # Each version's drift as the trainer measured it (KL to SFT, perplexity under SFT, distinct-2, length) on the
    # drift prompts, at temperature 1: the fluency price of what the votes taught.
    drift_of = {f"v{v}": {k: measured[v].get(k) for k in drift.METRICS} for v in sorted(measured)}
    return {
        "oracle": oracle.spec,
        "mode": mode,
        "vote_seconds": vote_seconds,
        "votes": counts,
        "win_rate": after["win_rate"],
        "fluency": fluency(after, drift_of),
        "drift": drift_of,
        # Each version's reward model: the pairs it learned from, and its agreement with the votes it judged before
        # any round trained on them (the last version's judged none: no vote came after it).
        "reward_models": {
            f"v{v['version']}": v["reward_model"]
            for v in playground.dashboard.facts()["versions"]
            if v.get("reward_model")
        },
        "before": before,
        "after": after,
        "rounds": rounds,
        "seconds": {
            "voting": round(voting_s, 1),
            "loop": round(loop_s, 1),
            "evaluation": round(evaluation_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "sampling": sampling.as_dict(),
    }


def record_and_ablate(
    playground: Playground,
    oracle: Oracle,
    votes: int,
    prompts: list[dict],
    heldout: list[dict],
    mode: str = "pairwise",
    sampling: Sampling | None = None,
    seed: int = 0,
    *,
    corrections: int = 0,
    ratings: bool = False,
    vote_seconds: float = 0.0,
) -> dict:
    """`simulate --ablation`: the voter's feedback on the SFT model's own answers (no trainer runs meanwhile), then
    each objective trained on it from that same start and measured on the held-out prompts (ablation.py)."""
    from . import ablation
    from .models import model_folder

    sampling = sampling or Sampling(temperature=0.8, top_p=0.95, max_new_tokens=128)
    started = time.perf_counter()
    counts = collect_votes(
        playground,
        oracle,
        votes,
        prompts,
        mode,
        sampling,
        random.Random(seed),
        corrections=corrections,
        ratings=ratings,
        follow=False,
        vote_seconds=vote_seconds,
    )
    voting_s = time.perf_counter() - started
    sft_dir = model_folder(playground.preset.sft, playground.data_dir, playground.models.trust_remote_code)
    result = ablation.ablate(
        playground.store,
        sft_dir,
        playground.round_settings,
        oracle,
        [p["prompt"] for p in heldout],
        sampling.max_new_tokens,
        playground.data_dir / "ablation",
        seed=10_000 + seed,
    )
    return {
        "oracle": oracle.spec,
        "mode": mode,
        "vote_seconds": vote_seconds,
        "votes": counts,
        **result,
        "seconds": {"voting": round(voting_s, 1), "total": round(time.perf_counter() - started, 1)},
        "sampling": sampling.as_dict(),
    }


def workspace(data_dir: Path) -> Path:
    """A fresh folder for one simulation's store and adapters (real votes are never mixed with simulated ones);
    the converted models are shared through a link to the main cache."""
    from .models import models_dir

    path = Path(data_dir) / "simulations" / time.strftime("run-%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=False)
    models_dir(data_dir).mkdir(parents=True, exist_ok=True)
    (path / "models").symlink_to(models_dir(data_dir).resolve(), target_is_directory=True)
    return path


def rl_prompts_without(heldout: list[dict], settings, folder: Path) -> Path:
    """The `rlhf` route's unvoted prompts (`--rl-prompts`) without the held-out ones, written to `folder`: RL never
    trains on a prompt the win rate is measured on."""
    from .training.rl import read_prompts

    held = {same_text(p["prompt"]) for p in heldout}
    path = Path(folder) / "rl_prompts.jsonl"
    kept = [p for p in read_prompts(settings.rl_prompts) if same_text(p) not in held]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in kept))
    return path
