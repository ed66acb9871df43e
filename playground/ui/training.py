"""The Training tab: the serving version, the trainer's state, the running round's progress, each stage's loss and
DPO's reward margin / accuracy across rounds, every version with what it learned from, its metrics and vote win rate;
Train now and rollback.

The render functions turn the shared figures (`dashboard.compute`) into what the components show; panel.py calls
them once per change for every open page.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..store import StoreError
from ..training import STAGE_TITLES, eligible_counts
from .common import VOTES, Page, code

# (panel output, drift metric, title)
DRIFT_PLOTS = (
    ("drift_length", "mean_tokens", "Answer length (tokens)"),
    ("drift_distinct", "distinct_2", "Distinct-2"),
    ("drift_kl", "kl_to_sft", "KL to SFT (nats per answer)"),
    ("drift_perplexity", "sft_perplexity", "Perplexity under SFT"),
    ("drift_win_rate", "win_rate", "Vote win rate"),
)
VERSION_HEADERS = [
    "version",
    "serving",
    "parent",
    "state",
    "demonstrations",
    "pairs",
    "ratings",
    "final loss",
    "reward margin",
    "reward acc",
    "vote win rate",
]


class TrainingTab:
    def __init__(self, page: Page):
        self.page = page

    def train_now(self):
        pg = self.page.playground
        # What a round could take now: each voter's feedback up to the per-voter cap; the rest waits for later rounds.
        eligible = eligible_counts(pg.store, pg.round_settings)
        if not sum(eligible.values()):
            return (
                "⚠ No feedback waits for a round: vote, rate or write a better answer first (a tie makes no "
                "training pair)."
            )
        if pg.store.running_round():
            return "A round is already running; the feedback that arrived since waits for the next one."
        pg.train_now()
        trainer = (
            ""
            if pg.trainer_alive()
            else (
                " The trainer process is not running yet; it starts when the models are ready."
                if not pg.ready
                else " No trainer process runs here; a trainer on this data set (`train --watch`) takes it."
            )
        )
        return f"✓ Asked for a round on {feedback_words(eligible)}.{trainer}"

    def rollback(self, version, admin_token):
        refusal = self.page.admin_refusal(admin_token, "Rolling back")
        if refusal:
            return refusal
        try:
            version = int(version)
            serving = self.page.playground.rollback(version)
        except (TypeError, ValueError):
            return "⚠ Enter a version number (0 = no adapter)."
        except StoreError as error:
            return f"⚠ {error}"
        if serving != version:
            return f"⚠ Version {version} could not be loaded; version {serving} serves instead."
        return f"✓ Now serving version {serving}" + (" (no adapter: the SFT model)." if serving == 0 else ".")

    def build(self) -> dict:
        """The components; returns those the panel refreshes."""
        training = gr.Markdown(elem_id="training-status", label="training status")
        with gr.Accordion("Stages: what each kind of feedback trains", open=True, elem_id="stages-view"):
            stages = gr.Markdown(elem_id="stages", label="stages")
        progress = gr.HTML(progress_html(None), elem_id="progress", label="progress")
        with gr.Row():
            train_btn = gr.Button("Train now", elem_id="train-now")
            train_message = gr.Markdown(label="message")
        with gr.Row():
            plots = {
                "loss": gr.LinePlot(
                    x="step",
                    y="loss",
                    color="stage",
                    title="Loss of each stage",
                    height=260,
                    x_title="step (all rounds)",
                    elem_id="stage-loss",
                ),
                "margin": gr.LinePlot(
                    x="step",
                    y="reward_margin",
                    color="round",
                    title="Reward margin",
                    height=260,
                    x_title="step (all rounds)",
                ),
                "accuracy": gr.LinePlot(
                    x="step",
                    y="reward_accuracy",
                    color="round",
                    title="Reward accuracy",
                    height=260,
                    x_title="step (all rounds)",
                    y_lim=[0, 1],
                ),
            }
        gr.Markdown(
            "Loss: each stage's own (SFT: negative log-likelihood of the demonstrations; DPO: its sigmoid "
            "loss on pairs; KTO: its loss on single ratings). Reward margin: how much more the adapter "
            "prefers a pair's chosen answer than the SFT model does (in β-scaled log-probability); accuracy: "
            "the share of pairs where it prefers the chosen one. Both are measured on the round's own "
            "training pairs. Vote win rate: the share of games a version won in the votes (ties half), the "
            "games the leaderboard counts."
        )
        versions = gr.Dataframe(
            headers=VERSION_HEADERS, interactive=False, elem_id="versions", label="Adapter versions"
        )
        gr.Markdown(
            "**Drift per version**, measured by the trainer right after each round on a fixed prompt set "
            "(one sampled answer a prompt, temperature 1; version 0 is the SFT model): answer length in tokens, "
            "distinct-2 (share of word pairs not repeated: falls when answers collapse into repetition), a "
            "sequence-level estimate of KL to the SFT model (nats per answer: how far the votes moved it), "
            "the perplexity of its answers under the SFT model, and its vote win rate so far.",
            elem_id="drift-help",
        )
        drift_plots = {}
        for row in (DRIFT_PLOTS[:3], DRIFT_PLOTS[3:]):
            with gr.Row():
                for name, column, title in row:
                    drift_plots[name] = gr.LinePlot(
                        x="version",
                        y=column,
                        title=title,
                        height=220,
                        x_title="version",
                        elem_id=name.replace("_", "-"),
                    )
        with gr.Row():
            version = gr.Number(label="Serve version (0 = no adapter)", precision=0, value=0)
            token = gr.Textbox(label="Admin token", type="password", visible=self.page.admin_gated)
            rollback_btn = gr.Button("Roll back / forward", elem_id="rollback")
        rollback_message = gr.Markdown(label="message")

        train_btn.click(self.train_now, None, [train_message], api_name="train_now", **VOTES)
        rollback_btn.click(self.rollback, [version, token], [rollback_message], api_name="rollback", **VOTES)
        return {
            "training": training,
            "stages": stages,
            "progress": progress,
            **plots,
            "versions": versions,
            **drift_plots,
        }


# ---- rendering the shared figures -----------------------------------------------------------------------------


def feedback_words(counts: dict[str, int]) -> str:
    """{kind: n} in words, e.g. "3 pairs, 1 demonstration"; kinds with none left out ("nothing" when all are)."""
    words = [f"{n} {kind if n != 1 else kind[:-1]}" for kind, n in counts.items() if n]
    return ", ".join(words) or "nothing yet"


def training_status(
    facts: dict, engine_version: int | None, trainer_alive: bool, min_pairs: int, eligible: dict[str, int] | None = None
) -> str:
    """min_pairs: this app's setting; a trainer that says its own (one started elsewhere) is believed instead.
    eligible: {kind: pending pieces a round could take} (under the per-voter cap, the kinds the weights turn on);
    default: every pending piece."""
    running, serving = facts["running_round"], facts["serving_version"]
    trainer = facts["trainer"] or {}
    need = trainer.get("min_pairs") or min_pairs
    if eligible is None:
        eligible = {kind: f["pending"] for kind, f in facts["feedback"].items()}
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
    elif pending >= need:
        lines.append(f"**{feedback_words(eligible)} wait**: the trainer starts a round within seconds.")
    else:
        lines.append(
            f"**Waiting for a round:** {feedback_words(eligible)} ({pending} of the {need} that start "
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
    }.get(state, "not seen yet")
    lines.append(
        f"**Trainer process:** {'running' if trainer_alive else 'not running here'} ({doing}) · "
        f"**rounds:** {sum(r['status'] == 'done' for r in facts['rounds'])} done, "
        f"{sum(r['status'] == 'failed' for r in facts['rounds'])} failed"
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


STEP_COLUMNS = ["step", "round", "stage", "loss", "reward_margin", "reward_accuracy"]


def steps_frame(steps: list[dict], rounds: list[dict]) -> pd.DataFrame:
    """One row per logged step, x = step index across all rounds, with its round (and the version it made) and its
    stage. Reward margin and accuracy are DPO's: the other stages' rows have none."""
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
            }
        )
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def plot_frame(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The columns one plot draws, without the rows that have no value to draw."""
    return frame[list(columns)].dropna().reset_index(drop=True)


def versions_table(facts: dict) -> list[list]:
    def rate(win_rate):
        return f"{win_rate['rate']:.0%} of {win_rate['games']}" if win_rate else "–"

    def number(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "–"

    rows = [
        [
            "v0 (SFT, no adapter)",
            "✓" if facts["serving_version"] == 0 else "",
            "",
            "ready",
            "",
            "",
            "",
            "",
            "",
            "",
            rate(facts["sft_win_rate"]),
        ]
    ]
    for v in facts["versions"]:
        m = v["metrics"] or {}
        state = v["state"] + (f" ({v['reason']})" if v["reason"] else "")
        if not v["served_on_publish"] and v["state"] == "ready":
            state += " (published, not served)"
        learned = v["learned_from"]
        rows.append(
            [
                f"v{v['version']}",
                "✓" if v["serving"] else "",
                f"v{v['parent_version'] or 0}",
                state,
                number(learned["demonstrations"], "d"),
                number(learned["pairs"], "d"),
                number(learned["ratings"], "d"),
                number(m.get("final_loss"), ".3f"),
                number(m.get("final_reward_margin"), ".3f"),
                number(m.get("final_reward_accuracy"), ".2f"),
                rate(v["vote_win_rate"]),
            ]
        )
    return rows


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
