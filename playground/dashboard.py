"""What the panels, `/stats` and `versions` show about a data set: counts, rounds and their steps, versions with
their vote win rates, the leaderboard, the trainer's state.

Computed once per change of the store (`Store.changes()`), not once per viewer: every open page refreshes its
panels every few seconds, and they all share one computation.
"""

from __future__ import annotations

import threading
from typing import Any

from . import leaderboard
from .store import Store

ROUND_FIELDS = (
    "id",
    "status",
    "version",
    "parent_version",
    "pairs_used",
    "learned_from",
    "steps_done",
    "steps_total",
    "error",
    "started_at",
    "finished_at",
)
VERSION_FIELDS = (
    "version",
    "parent_version",
    "state",
    "reason",
    "pairs_used",
    "learned_from",
    "serving",
    "served_on_publish",
    "metrics",
    "path",
    "hyperparams",
    "created_at",
    "reward_model",
)
# What `/stats` shows of each version: not where its files lie on the server, nor its raw settings; with its figures.
STATS_VERSION_FIELDS = (
    *(f for f in VERSION_FIELDS if f not in ("path", "hyperparams", "created_at")),
    "vote_win_rate",
    "drift",
)


def compute(store: Store) -> dict[str, Any]:
    """Every figure at once, from one pass over the votes (ratings and win rates come from the same games)."""
    changes = store.changes()
    standings = leaderboard.leaderboard(store.export_votes())
    # A player's win rate: its games and wins (ties half) in the games the ratings were fitted to.
    rates = {s.player: {"games": s.comparisons, "wins": s.wins, "rate": s.win_rate} for s in standings}
    serving = store.serving_version()

    def win_rate(player: str) -> dict | None:
        return rates.get(player)

    drift = drift_by_version(store.version_evals())

    def drift_of(version: int, rate: dict | None) -> dict | None:
        measured = drift.get(version)
        return (
            None
            if measured is None
            else measured | {"win_rate": rate["rate"] if rate else None, "games": rate["games"] if rate else 0}
        )

    agreement = store.reward_agreement()
    versions = []
    for v in store.versions():
        rate = win_rate(f"pref v{v['version']}")
        v["reward_model"] = reward_model_of(v, agreement)
        versions.append(
            {k: v.get(k) for k in VERSION_FIELDS} | {"vote_win_rate": rate, "drift": drift_of(v["version"], rate)}
        )
    running = store.running_round()
    return {
        "changes": changes,
        "serving_version": serving,
        "counts": store.counts(),
        "feedback": store.feedback_totals(),
        "running_round": _round(running) if running else None,
        "rounds": [_round(r) for r in store.rounds()],
        "steps": store.round_steps(),
        "versions": versions,
        "sft_win_rate": win_rate("sft"),  # version 0: the SFT model plays the preference arm
        "sft_drift": drift_of(0, win_rate("sft")),  # the baseline every version's drift is read against
        "standings": standings,
        # Each player's mean score by the newest reward model that scored answers (the Leaderboard's last column).
        "mean_rewards": store.mean_rewards_by_player(),
        "win_rates": rates,
        "trainer": store.trainer_state(),
        "ablation": store.latest_ablation(),
        "overoptimization": store.latest_overoptimization(),
        "ablation_progress": store.ablation_progress(),
    }


def reward_model_of(version: dict, agreement: dict[int, dict]) -> dict | None:
    """A version's reward model: {"pairs", "accuracy_train", "agreement", "judged"} (agreement: on the votes it judged
    before any round trained on them, None until it judged one); None when the version has none."""
    trained = (version.get("metrics") or {}).get("reward_model")
    if not trained:
        return None
    judged = agreement.get(version["version"], {})
    return {
        "pairs": trained.get("pairs"),
        "accuracy_train": trained.get("accuracy_train"),
        "agreement": judged.get("agreement"),
        "judged": judged.get("judged", 0),
    }


def drift_by_version(evaluations: list[dict]) -> dict[int, dict]:
    """{version: metrics} of the prompt set measured last (older sets' figures would not compare), each with its
    `eval_set` and when it was measured."""
    if not evaluations:
        return {}
    current = evaluations[-1]["eval_set"]
    return {
        e["version"]: e["metrics"] | {"eval_set": current, "measured_at": e["created_at"]}
        for e in evaluations
        if e["eval_set"] == current
    }


def _round(r: dict) -> dict:
    return {k: r.get(k) for k in ROUND_FIELDS}


class Dashboard:
    """`compute(store)`, cached until the store changes; safe to call from many threads at once."""

    def __init__(self, store: Store):
        self.store = store
        self.computed = 0  # how many times the figures were computed (the panel benchmark and tests read it)
        self._facts: dict | None = None
        self._lock = threading.Lock()

    def facts(self) -> dict[str, Any]:
        changes = self.store.changes()
        facts = self._facts
        if facts is not None and facts["changes"] == changes:
            return facts
        with self._lock:  # one viewer computes; the others wait for its result instead of computing it again
            facts = self._facts
            if facts is None or facts["changes"] != self.store.changes():
                facts = compute(self.store)
                self._facts = facts
                self.computed += 1
            return facts


# The versions table as both faces show it (the Training tab, `python -m playground versions`): one row per version,
# v0 (the SFT model, no adapter) first; every cell a string, "–" where nothing was measured yet.
VERSION_COLUMNS = {
    "version": "version",
    "serving": "serving",
    "parent": "parent",
    "state": "state",
    "demonstrations": "demonstrations",
    "pairs": "pairs",
    "ratings": "ratings",
    "final_loss": "final loss",
    "reward_margin": "reward margin",
    "reward_accuracy": "reward acc",
    "vote_win_rate": "vote win rate",
    "rm_agreement": "RM agreement",
    "mean_tokens": "length",
    "distinct_2": "dist-2",
    "kl_to_sft": "KL to SFT",
    "sft_perplexity": "ppl",
    "path": "path",
}
NOT_MEASURED = "–"


def version_table(facts: dict[str, Any]) -> list[dict[str, str]]:
    """Rows keyed by VERSION_COLUMNS, from `compute`'s figures."""

    def number(value, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else NOT_MEASURED

    def rate(win_rate: dict | None) -> str:
        return f"{win_rate['rate']:.0%} of {win_rate['games']}" if win_rate else NOT_MEASURED

    def drift(measured: dict | None) -> dict[str, str]:
        measured = measured or {}
        formats = {"mean_tokens": ".1f", "distinct_2": ".2f", "kl_to_sft": ".2f", "sft_perplexity": ".2f"}
        return {key: number(measured.get(key), fmt) for key, fmt in formats.items()}

    empty = dict.fromkeys(("parent", "demonstrations", "pairs", "ratings"), "")
    empty |= dict.fromkeys(("final_loss", "reward_margin", "reward_accuracy", "rm_agreement"), "")
    rows = [
        {"version": "v0 (SFT, no adapter)", "serving": "✓" if facts["serving_version"] == 0 else "", **empty}
        | {"state": "ready", "vote_win_rate": rate(facts["sft_win_rate"]), **drift(facts["sft_drift"]), "path": ""}
    ]
    for v in facts["versions"]:
        m, learned = v["metrics"] or {}, v["learned_from"]
        state = v["state"] + (f" ({v['reason']})" if v["reason"] else "")
        if not v["served_on_publish"] and v["state"] == "ready":
            state += " (published, not served)"
        rows.append(
            {
                "version": f"v{v['version']}",
                "serving": "✓" if v["serving"] else "",
                "parent": parent_cell(v),
                "state": state,
                **{kind: number(learned[kind], "d") for kind in ("demonstrations", "pairs", "ratings")},
                "final_loss": number(m.get("final_loss"), ".3f"),
                "reward_margin": number(m.get("final_reward_margin"), ".3f"),
                "reward_accuracy": number(m.get("final_reward_accuracy"), ".2f"),
                "vote_win_rate": rate(v["vote_win_rate"]),
                "rm_agreement": agreement_cell(v.get("reward_model")),
                **drift(v["drift"]),
                "path": str(v["path"] or ""),
            }
        )
    return rows


def agreement_cell(reward_model: dict | None) -> str:
    """A reward model's agreement with the votes it judged before training on them, and how many."""
    if not reward_model:
        return NOT_MEASURED
    if not reward_model["judged"]:
        return f"– (0 judged; {reward_model['accuracy_train']:.0%} on its {reward_model['pairs']} training pairs)"
    return f"{reward_model['agreement']:.0%} of {reward_model['judged']}"


def parent_cell(version: dict) -> str:
    """Where a version's adapter started: its parent, or a fresh adapter when the round could not warm-start from it
    (the LoRA settings changed its shape since), with why."""
    parent = f"v{version['parent_version'] or 0}"
    warm_start = (version.get("hyperparams") or {}).get("warm_start") or {}
    if warm_start.get("fresh") and warm_start.get("reason"):
        return f"{parent}, but trained from a fresh adapter: {warm_start['reason']}"
    return parent
