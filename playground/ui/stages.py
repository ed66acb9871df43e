"""The Stages view of the Training tab: the two datasets people give, side by side, which stage of alignment each
trains, which version learned from them, and what each stage contributed in the latest ablation. Short, plain
sentences: this is where a student sees the two stages.
"""

from __future__ import annotations

from ..ablation import cells
from ..processes import pid_alive
from ..settings import RoundSettings
from ..training import OBJECTIVE_TITLES

INTRO = (
    "**Two stages, two datasets.** *Instruction alignment* (SFT) learns from **demonstrations**: a prompt and "
    "the one answer a person wrote for it; it makes that answer likely. *Preference alignment* (DPO) learns from "
    "**rankings**: which of several model answers a person preferred; it makes the preferred answer more likely "
    "than the others, relative to the SFT model. Every round runs them in that order on one adapter: first "
    "the written answers, then the preferences, building on them. Single ratings (**Good** / **Bad** under an "
    "answer, and **All three are bad**) train a third, unpaired preference loss (KTO)."
)
ROUTES = (
    "**Two routes for the preferences.** *Directly* (`--preference-route dpo`, the default): DPO turns each pair "
    "into a push on the model itself; there is no separate judge, only the implicit reward *Why this answer?* "
    "shows. *Through a reward model* (`--preference-route rlhf`): every round first trains a **reward model** on "
    "the same pairs, a learned stand-in for people's judgment that scores any answer, on prompts nobody voted on "
    "too; then reinforcement learning (GRPO) makes the model write answers that reward model scores higher, on the "
    "voted prompts and on new ones, held near the SFT model by a KL penalty (`--rl-beta`). Every round trains the "
    "reward model either way: its score shows under each answer, and each new vote tests it before it learns from "
    "it (its *agreement*). Pushed too hard, RL finds what the reward model over-rewards: its score keeps rising "
    "while people's real preference stops following (*over-optimization*, the plots below)."
)


def _latest_learner(versions: list[dict], kind: str) -> str:
    learned = [v["version"] for v in versions if v["state"] == "ready" and v["learned_from"][kind]]
    return f"v{max(learned)}" if learned else "none yet"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _weight(value: float, flag: str) -> str:
    return f"off (`{flag} 0`)" if value <= 0 else f"{value:g} (`{flag}`)"


def stages_markdown(facts: dict, settings: RoundSettings) -> str:
    feedback, votes, versions = facts["feedback"], facts["counts"]["votes_by_kind"], facts["versions"]
    demos, pairs, ratings = feedback["demonstrations"], feedback["pairs"], feedback["ratings"]
    ranked = votes.get("best", 0) + votes.get("pairwise", 0)
    rows = [
        "| | Dataset 1: demonstrations | Dataset 2: preferences |",
        "|---|---|---|",
        f"| people gave | {_count(demos['total'], 'better answer')} written | "
        f"{_count(ranked, 'ranked comparison')} (best, ranking, duel) → {_count(pairs['total'], 'pair')}, with each "
        f"better answer's pairs; {_count(ratings['total'], 'single rating')} |",
        "| it trains | instruction alignment: SFT, the written answer made likely | preference alignment: DPO on "
        "the pairs, KTO on the ratings, both relative to the SFT model |",
        f"| waiting for a round | {demos['pending']} | {pairs['pending']} pairs, {ratings['pending']} ratings |",
        f"| latest version that learned from it | {_latest_learner(versions, 'demonstrations')} | "
        f"{_latest_learner(versions, 'pairs')} (pairs), {_latest_learner(versions, 'ratings')} (ratings) |",
        f"| weight | {_weight(settings.sft_weight, '--sft-weight')} | pairs 1; ratings "
        f"{_weight(settings.rating_weight, '--rating-weight')} |",
    ]
    route = f"This server's route: **{settings.preference_route}**" + (
        f" (RL β {settings.rl_beta:g}, {settings.rl_steps} steps a round)."
        if settings.preference_route == "rlhf"
        else "."
    )
    return "\n\n".join(
        [
            INTRO,
            "\n".join(rows),
            ROUTES,
            route,
            ablation_progress_markdown(facts.get("ablation_progress")),
            ablation_markdown(facts.get("ablation")),
            overoptimization_markdown(facts),
        ]
    )


def ablation_progress_markdown(progress: dict | None) -> str:
    """The running ablation's progress bar (objectives done of all), or why it stopped; "" when none runs."""
    if not progress:
        return ""
    if progress.get("error"):
        return f"**The last ablation failed:** {progress['error']}"
    if not pid_alive(progress.get("pid")):
        return "**The last ablation stopped before it finished** (its process is gone); run it again."
    done, total = int(progress.get("done") or 0), int(progress.get("total") or 0)
    if not total:
        return "**Ablation starting…** (loading the models)"
    bar = "▓" * done + "░" * (total - done)
    return f"**Ablation running:** `{bar}` {done} of {total} objectives done; now training `{progress['current']}`."


def overoptimization_markdown(facts: dict) -> str:
    measured = facts.get("overoptimization")
    if not measured or not measured.get("curve"):
        return (
            "**The surrogate and the truth** have not been measured for these models yet: `python -m playground "
            "simulate --oracle shorter --votes 32 --preference-route rlhf --checkpoint-steps 8` runs RL against the "
            "last reward model for longer than a round and plots its score and the oracle's win rate against KL."
        )
    first, last = measured["curve"][0], measured["curve"][-1]
    peak = max(measured["curve"], key=lambda c: c["win_rate"])
    return (
        f"**The surrogate and the truth** (oracle `{measured['oracle']}`, reward model v{measured['reward_model_version']}, "
        f"β {measured['rl_beta']:g}, {measured['steps']} RL steps, {measured['heldout_prompts']} held-out prompts): "
        f"reward-model score {first['reward']:+.2f} → {last['reward']:+.2f}, true win rate against SFT "
        f"{first['win_rate']:.2f} → {last['win_rate']:.2f} (highest {peak['win_rate']:.2f} at KL {peak['kl']:.1f}), "
        f"KL to SFT {first['kl']:.1f} → {last['kl']:.1f} nats per answer."
    )


def ablation_markdown(ablation: dict | None) -> str:
    """What each stage contributed in the latest ablation of these models, or how to measure it."""
    if not ablation:
        return (
            "**What each stage contributes** has not been measured for these models yet: **Run the ablation** below "
            "trains this data set's recorded feedback under each objective (`python -m playground ablate`), and "
            "`python -m playground simulate --oracle shorter --votes 32 --corrections 4 --ratings --ablation` does the "
            "same with a simulated voter's; both compare them here."
        )
    v = ablation["votes"]
    source = "this data set's own" if ablation.get("source") == "recorded" else "a simulated voter's"
    lines = [
        f"**What each stage contributes** (latest ablation: oracle `{ablation['oracle']}`, {v['votes']} votes, "
        f"{v['corrections']} better answers, {v['ratings']} ratings; each objective trained from the SFT model "
        f"on the same feedback, then compared on {ablation['heldout_prompts']} held-out prompts; the feedback: "
        f"{source}):",
        "",
        "| objective | stages | win rate vs SFT | ties | perplexity under SFT | KL to SFT | mean length | "
        "reward model agrees | round s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in ablation["ablation"].items():
        lines.append(f"| {name} | {OBJECTIVE_TITLES.get(name, name)} | {' | '.join(cells(f))} |")
    lines.append(
        "\nWin rate: the oracle's verdict on each answer against the SFT model's answer to the same prompt "
        "and seed, ties ½ (0.5 = no change). Ties: the share the oracle could not tell apart (mostly the same "
        "answer). KL: how far the version moved from the SFT model (nats per answer). Reward model agrees (RL "
        "objectives): the share of the decided held-out pairs its reward model orders as the oracle does."
    )
    return "\n".join(lines)
