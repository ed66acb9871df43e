"""The Training tab: the serving version, the trainer's state, the running round's progress, each stage's loss and
DPO's reward margin / accuracy across rounds, every version with what it learned from, its metrics and vote win rate;
Train now and rollback. What the panels show is rendered in training_panels.py.
"""

from __future__ import annotations

import gradio as gr

from ..store import StoreError
from ..training import eligible_counts, min_pairs_in_force, request_honoured, round_due
from .page import Page
from .training_panels import DRIFT_PLOTS, VERSION_HEADERS, feedback_words, progress_html
from .wiring import VOTES


class TrainingTab:
    def __init__(self, page: Page):
        self.page = page

    def run_ablation(self, oracle="shorter", admin_token=None):
        """Start the ablation of the recorded feedback in a process of its own; on a Space only with the admin token
        (it trains six rounds: one visitor must not take the machine's cores)."""
        refusal = self.page.admin_refusal(admin_token, "Running the ablation")
        if refusal:
            return refusal
        try:
            return self.page.playground.start_ablation(str(oracle or "shorter"))
        except ValueError as error:
            return f"⚠ {error}"

    def train_now(self, admin_token=None):
        pg = self.page.playground
        settings = pg.round_settings
        eligible = eligible_counts(pg.store, settings)
        if not round_due(sum(eligible.values()), settings.min_pairs, requested=True):
            return (
                "⚠ No feedback waits for a round: vote, rate or write a better answer first (a tie makes no "
                "training pair)."
            )
        if pg.store.running_round():
            return "A round is already running; the feedback that arrived since waits for the next one."
        admin = self.page.admin_authorized(admin_token)
        if admin_token and self.page.admin_token and not admin:
            return "⚠ Wrong admin token."
        if not request_honoured({"admin": admin}, settings):
            return self.why_the_round_waits(eligible)
        pg.train_now(admin=admin)
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

    def why_the_round_waits(self, eligible: dict[str, int]) -> str:
        """Why a visitor's Train now starts nothing on a server with a per-voter cap (the trainer enforces the same
        rule: training.request_honoured)."""
        pg = self.page.playground
        settings = pg.round_settings
        min_pairs = min_pairs_in_force(pg.store.trainer_state(), settings.min_pairs)
        pending = sum(eligible.values())
        if round_due(pending, min_pairs):
            return f"✓ {feedback_words(eligible)} wait: the trainer starts a round within seconds."
        admin = (
            "; an admin can start one now with the admin token"
            if self.page.admin_token
            else " (a round cannot be started early: no admin token is configured)"
        )
        return (
            f"⏳ The round waits: on this server a round starts when {min_pairs} pieces of feedback wait, counting at "
            f"most {settings.pairs_per_voter} of each voter's, so that no one voter alone trains the model. "
            f"{pending} wait now; it needs feedback from more people{admin}."
        )

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
            retry = self.page.playground.serving.retry
            if retry is not None and retry.version == version:
                return (
                    f"⏳ Version {version} serves as soon as the runtime takes it (it could not now: "
                    f"{retry.error}); it is tried again within {retry.seconds_left():.0f} s, and version {serving} "
                    f"answers meanwhile."
                )
            return f"⚠ Version {version} could not be loaded; version {serving} serves instead."
        return f"✓ Now serving version {serving}" + (" (no adapter: the SFT model)." if serving == 0 else ".")

    def build(self) -> dict:
        """The components; returns those the panel refreshes."""
        training = gr.Markdown(elem_id="training-status", label="training status")
        with gr.Accordion("Stages: what each kind of feedback trains", open=True, elem_id="stages-view"):
            stages = gr.Markdown(elem_id="stages", label="stages")
            with gr.Row():
                oracle = gr.Dropdown(
                    ["shorter", "plain"], value="shorter", label="Judge of the held-out answers", scale=1
                )
                ablate_btn = gr.Button("Run the ablation on this data set's feedback", elem_id="run-ablation", scale=2)
                ablate_token = gr.Textbox(label="Admin token", type="password", visible=self.page.admin_gated, scale=1)
            ablate_message = gr.Markdown(elem_id="ablation-message")
        progress = gr.HTML(progress_html(None), elem_id="progress", label="progress")
        with gr.Row():
            train_btn = gr.Button("Train now", elem_id="train-now")
            # One box for the tab's admin actions: a round before enough voters gave feedback, and rollback.
            token = gr.Textbox(
                label="Admin token (Train now early, roll back)", type="password", visible=self.page.admin_gated
            )
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
        with gr.Row():
            plots["rl_reward"] = gr.LinePlot(
                x="step",
                y="rl_reward",
                color="round",
                title="RL (rlhf route): reward-model score of its samples",
                height=220,
                x_title="step (all rounds)",
            )
            plots["rl_kl"] = gr.LinePlot(
                x="step",
                y="rl_kl",
                color="round",
                title="RL: KL to SFT (per token)",
                height=220,
                x_title="step (all rounds)",
            )
        gr.Markdown(
            "Loss: each stage's own (SFT: negative log-likelihood of the demonstrations; DPO: its sigmoid "
            "loss on pairs; KTO: its loss on single ratings; RL: GRPO's loss against the reward model). Reward margin: how much more the adapter "
            "prefers a pair's chosen answer than the SFT model does (in β-scaled log-probability); accuracy: "
            "the share of pairs where it prefers the chosen one. Both are measured on the round's own "
            "training pairs. Vote win rate: the share of games a version won in the votes (ties half), the "
            "games the leaderboard counts."
        )
        versions = gr.Dataframe(
            headers=VERSION_HEADERS, interactive=False, elem_id="versions", label="Adapter versions"
        )
        agreement = gr.ScatterPlot(
            x="pairs learned from",
            y="agreement",
            color="version",
            title="Reward model: agreement with new votes",
            height=220,
            y_lim=[0, 1],
            elem_id="rm-agreement",
        )
        with gr.Row():
            surrogate = gr.LinePlot(
                x="KL to SFT",
                y="reward model score",
                title="The surrogate: reward-model score",
                height=220,
                elem_id="overopt-reward",
            )
            truth = gr.LinePlot(
                x="KL to SFT",
                y="true win rate",
                title="The truth: oracle's win rate vs SFT",
                height=220,
                y_lim=[0, 1],
                elem_id="overopt-truth",
            )
        gr.Markdown(
            "**The surrogate and the truth**: RL against a reward model for longer than a round, from the SFT model "
            "(the latest `simulate --preference-route rlhf --checkpoint-steps N`). Both plotted against how far RL "
            "moved the model (KL to SFT): where the reward model's score keeps rising and the oracle's win rate "
            "does not, RL is optimizing the stand-in, not the preference."
        )
        gr.Markdown(
            "**Reward model per version** (trained on the same pairs as the round, after the version is published): "
            "its agreement is the share of people's later votes where it scored their choice higher, each vote "
            "judged before any round trained on it, so it is measured on pairs it never saw; against the pairs it "
            "learned from. 0.5 is a coin."
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
            rollback_btn = gr.Button("Roll back / forward", elem_id="rollback")
        rollback_message = gr.Markdown(label="message")

        train_btn.click(self.train_now, [token], [train_message], api_name="train_now", **VOTES)
        ablate_btn.click(self.run_ablation, [oracle, ablate_token], [ablate_message], api_name="ablate", **VOTES)
        rollback_btn.click(self.rollback, [version, token], [rollback_message], api_name="rollback", **VOTES)
        return {
            "training": training,
            "stages": stages,
            "progress": progress,
            **plots,
            "versions": versions,
            "agreement": agreement,
            "surrogate": surrogate,
            "truth": truth,
            **drift_plots,
        }
