"""What the Training tab's panels show, rendered from the shared figures (`dashboard.facts()`): the training
status, the running round's progress, each stage's loss and DPO's reward margin / accuracy across rounds, the
versions table, and each version's drift. panel.py calls these once per change for every open page.
"""

from __future__ import annotations

import pandas as pd

from ..dashboard import VERSION_COLUMNS, version_table
from ..training import STAGE_TITLES, round_due
from .text import code

# (panel output, drift metric, title)
DRIFT_PLOTS = (
    ("drift_length", "mean_tokens", "Answer length (tokens)"),
    ("drift_distinct", "distinct_2", "Distinct-2"),
    ("drift_kl", "kl_to_sft", "KL to SFT (nats per answer)"),
    ("drift_perplexity", "sft_perplexity", "Perplexity under SFT"),
    ("drift_win_rate", "win_rate", "Vote win rate"),
)
# The versions table's columns on the page (dashboard.version_table defines every column; drift has its own plots).
VERSION_SHOWN = (
    "version",
    "serving",
    "parent",
    "state",
    "demonstrations",
    "pairs",
    "ratings",
    "final_loss",
    "reward_margin",
    "reward_accuracy",
    "vote_win_rate",
    "rm_agreement",
)
VERSION_HEADERS = [VERSION_COLUMNS[column] for column in VERSION_SHOWN]


def feedback_words(counts: dict[str, int]) -> str:
    """{kind: n} in words, e.g. "3 pairs, 1 demonstration"; kinds with none left out ("nothing" when all are)."""
    words = [f"{n} {kind if n != 1 else kind[:-1]}" for kind, n in counts.items() if n]
    return ", ".join(words) or "nothing yet"


def training_status(
    facts: dict, engine_version: int | None, trainer_alive: bool, min_pairs: int, eligible: dict[str, int]
) -> str:
    """min_pairs: the one in force (`min_pairs_in_force`); eligible: {kind: pending pieces a round could take}
    (`eligible_counts`)."""
    running, serving = facts["running_round"], facts["serving_version"]
    trainer = facts["trainer"] or {}
    pending = sum(eligible.values())
    # Over a voter's cap: it waits for later rounds.
    held = sum(facts["feedback"][kind]["pending"] for kind in eligible) - pending
    lines = [
        f"**Serving:** adapter **v{serving}**"
        + (" (none yet: the preference-tuned arm is the SFT model)" if serving == 0 else "")
    ]
    if engine_version is not None and engine_version != serving:
        lines.append(f"Swapping in v{serving} (v{engine_version} answers meanwhile)…")
    newest = facts["versions"][-1] if facts["versions"] else None
    if newest and not newest["serving"] and not newest["served_on_publish"] and newest["state"] == "ready":
        lines.append(
            f"**v{newest['version']} was published but does not serve:** the serving version changed "
            f"while its round ran (from v{newest['parent_version'] or 0}), and that choice stands. "
            f"Roll forward to v{newest['version']} to serve it."
        )
    if running:
        lines.append(f"**Round {running['id']} running** on {feedback_words(running['learned_from'])}.")
    elif round_due(pending, min_pairs):
        lines.append(f"**{feedback_words(eligible)} wait**: the trainer starts a round within seconds.")
    else:
        lines.append(
            f"**Waiting for a round:** {feedback_words(eligible)} ({pending} of the {min_pairs} that start "
            f"one: each pair, demonstration and rating counts one; or press Train now)."
        )
    if held > 0:
        lines.append(
            f"{held} more wait{'s' * (held == 1)} for later rounds: one voter's feedback beyond "
            f"`--pairs-per-voter` per round."
        )
    state = trainer.get("state")
    doing = {
        "waiting": "waiting for feedback",
        "training": "training",
        "stopped": "stopped",
        "evaluating": "measuring a version's drift",
        "training reward model": "training the newest version's reward model",
        "stuck": "not retrying a failing round",
    }.get(state, "not seen yet")
    lines.append(
        f"**Trainer process:** {'running' if trainer_alive else 'not running here'} ({doing}) · "
        f"**rounds:** {sum(r['status'] == 'done' for r in facts['rounds'])} done, "
        f"{sum(r['status'] == 'failed' for r in facts['rounds'])} failed"
    )
    if state == "stuck":
        lines.append(
            f"**Rounds paused:** the last {trainer.get('failures')} rounds failed the same way, so the trainer stops "
            f"retrying until it restarts (e.g. with other settings) or a round is asked for (Train now, with the admin "
            f"token where one is set): {code(trainer.get('error') or '')}"
        )
    failed = [r for r in facts["rounds"] if r["status"] == "failed"]
    if failed and failed[-1] is facts["rounds"][-1]:
        lines.append(f"Last round failed (its pairs stay pending): {code(failed[-1]['error'])}")
    return "  \n".join(lines)


def progress_html(running: dict | None) -> str:
    # Built from integers only: nothing a user typed reaches this HTML.
    if not running:
        return (
            "<div class='pg-progress'><div class='pg-progress-fill' style='width: 0%'></div></div>"
            "<div class='pg-meta'>No round running.</div>"
        )
    done, total = int(running["steps_done"] or 0), int(running["steps_total"] or 0)
    percent = int(100 * done / total) if total else 0
    return (
        f"<div class='pg-progress' role='progressbar' aria-valuenow='{done}' aria-valuemax='{total}'>"
        f"<div class='pg-progress-fill' style='width: {percent}%'></div></div>"
        f"<div class='pg-meta'>Round {int(running['id'])}: step {done} of {total or '?'}</div>"
    )


STEP_COLUMNS = ["step", "round", "stage", "loss", "reward_margin", "reward_accuracy", "rl_reward", "rl_kl"]


def steps_frame(steps: list[dict], rounds: list[dict]) -> pd.DataFrame:
    """One row per logged step, x = step index across all rounds, with its round (and the version it made) and its
    stage. Reward margin and accuracy are DPO's, rl_reward and rl_kl the RL stage's: the other stages' rows have none."""
    made = {r["id"]: r["version"] for r in rounds}
    rows = []
    for index, s in enumerate(steps, 1):
        version = made.get(s["round_id"])
        label = f"round {s['round_id']}" + (f" → v{version}" if version else "")
        dpo = s["stage"] == "dpo"
        rows.append(
            {
                "step": index,
                "round": label,
                "stage": STAGE_TITLES.get(s["stage"], s["stage"]),
                "loss": s["loss"],
                "reward_margin": s["reward_margin"] if dpo else None,
                "reward_accuracy": s["reward_accuracy"] if dpo else None,
                # The rlhf route's RL stage: the reward model's mean score of its samples, their KL to SFT.
                "rl_reward": (s.get("extra") or {}).get("reward") if s["stage"] == "grpo" else None,
                "rl_kl": (s.get("extra") or {}).get("kl") if s["stage"] == "grpo" else None,
            }
        )
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def plot_frame(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The columns one plot draws, without the rows that have no value to draw."""
    return frame[list(columns)].dropna().reset_index(drop=True)


def versions_table(facts: dict) -> list[list]:
    return [[row[column] for column in VERSION_SHOWN] for row in version_table(facts)]


def drift_frame(facts: dict) -> pd.DataFrame:
    """One row per measured version (0 = the SFT model), one column per drift metric."""
    columns = [column for _, column, _ in DRIFT_PLOTS]
    measured = [(0, facts.get("sft_drift"))] + [
        (v["version"], v["drift"]) for v in facts["versions"] if v["state"] == "ready"
    ]
    rows = [
        {"version": f"v{version}", **{c: drift.get(c) for c in columns}}
        for version, drift in measured
        if drift and "error" not in drift
    ]
    # Versions as names, in version order: the plot keeps the data's order for a category axis, and a number axis
    # would draw ticks at fractions of a version.
    return pd.DataFrame(rows, columns=["version", *columns]).astype({c: float for c in columns})


def agreement_frame(facts: dict) -> pd.DataFrame:
    """One row per version whose reward model judged votes: the pairs it learned from and its agreement with the
    votes it judged before training on them."""
    rows = [
        {
            "pairs learned from": rm["pairs"],
            "agreement": rm["agreement"],
            "version": f"v{v['version']}",
            "judged": rm["judged"],
        }
        for v in facts["versions"]
        if (rm := v.get("reward_model")) and rm["judged"]
    ]
    return pd.DataFrame(rows, columns=["pairs learned from", "agreement", "version", "judged"])


def overoptimization_frame(facts: dict) -> pd.DataFrame:
    """The latest over-optimization curve: one row per checkpoint (KL to SFT, reward-model score, true win rate)."""
    curve = (facts.get("overoptimization") or {}).get("curve") or []
    rows = [{"KL to SFT": c["kl"], "reward model score": c["reward"], "true win rate": c["win_rate"]} for c in curve]
    return pd.DataFrame(rows, columns=["KL to SFT", "reward model score", "true win rate"])
