"""The Leaderboard and Data tabs: ratings; counts, downloads (pairs, demonstrations and ratings in TRL's formats, raw
votes) and Hub pushes.

The trl exports (prompts and answers: no session, address or voter) are open to everyone. The raw votes (sessions and
voters) and Hub pushes are admin actions (`Page.admin_refusal`)."""

from __future__ import annotations

import gradio as gr

from .. import leaderboard, publishing
from .page import Page
from .wiring import DATA, PANEL

COUNT_HEADERS = ["what", "count"]


def counts_table(counts: dict, feedback: dict) -> list[list]:
    """Counts by vote kind and of what they made (`feedback`: `Store.feedback_totals()`)."""
    kinds = {
        "best": "best-of-three votes",
        "all_bad": "all-bad votes",
        "pairwise": "duel (A/B) votes",
        "thumb": "thumbs",
        "correction": "better answers written (demonstrations)",
    }
    rows = [[label, counts["votes_by_kind"].get(kind, 0)] for kind, label in kinds.items()]
    return rows + [
        ["votes in all", counts["votes"]],
        ["prompts", counts["prompts"]],
        ["comparisons", counts["comparisons"]],
        ["training pairs (DPO)", counts["pairs"]],
        ["pairs waiting for a round", counts["pairs_pending"]],
        ["demonstrations (SFT)", feedback["demonstrations"]["total"]],
        ["single ratings (KTO)", feedback["ratings"]["total"]],
        ["training rounds", counts["rounds"]],
        ["adapter versions", counts["versions"]],
    ]


class DataTab:
    def __init__(self, page: Page, panel):
        self.page, self.panel = page, panel

    def leaderboard(self):
        facts = self.page.playground.dashboard.facts()
        return leaderboard.table(facts["standings"], facts["mean_rewards"]["players"])

    def stats(self) -> dict:
        return self.panel.stats()

    def export(self, what, admin_token=None):
        if what == "votes":
            refusal = self.page.admin_refusal(admin_token, "Exporting the raw votes")
            if refusal:
                return None, refusal
        what = what if what in publishing.EXPORTS else "pairs"
        path, n = self.page.playground.export(what)
        noun, detail = {
            "votes": ("vote", " with their answers"),
            "pairs": ("preference pair", " in TRL's conversational preference format (DPO)"),
            "demonstrations": (
                "demonstration",
                " (people's better answers) in TRL's conversational messages format (SFT)",
            ),
            "ratings": ("rating", " (single answers, 👍 true / 👎 false) in TRL's unpaired preference format (KTO)"),
        }[what]
        return str(path), f"✓ {n} {noun}{'' if n == 1 else 's'}{detail}: {path.name}"

    def push(self, hf_token, dataset_repo, model_repo, private, admin_token):
        refusal = self.page.admin_refusal(admin_token, "Pushing to the Hub")
        if refusal:
            return refusal
        token = self.push_token(hf_token, admin_token)
        if not token:
            return (
                "⚠ Enter a Hugging Face token with write access. The server's own token (HF_TOKEN) is used "
                "only for an admin: with PLAYGROUND_ADMIN_TOKEN configured and typed in the admin token box."
            )
        return self.page.playground.push(token, dataset_repo, model_repo, private=bool(private))

    def push_token(self, hf_token, admin_token) -> str:
        """The token a push uses, always explicit (never None, which would mean the server's login): the one typed,
        else the server's own login but only for an admin who gave the configured token; else ""."""
        typed = (hf_token or "").strip()
        if typed:
            return typed
        if self.page.admin_authorized(admin_token):
            return publishing.server_token() or ""
        return ""

    def build_leaderboard(self) -> dict:
        gr.Markdown(
            "Bradley-Terry ratings (Elo scale, mean 1000) from the votes: a best-of-three winner beats each other "
            "answer, a full ranking gives every implied pair, a duel vote is one game and a tie half a win each way; "
            "all-bad, both-bad, thumbs and identical answers are left out. The preference-tuned arm at version 0 is "
            "the SFT model, so it counts as **sft**. 95% intervals: 200 bootstrap resamples of the votes. The "
            "training pairs come from the same games (a tie makes none). Mean reward-model score: the mean score "
            "of each player's answers by the newest reward model that scored them (answers in brackets), the "
            "learned surrogate beside people's own verdicts."
        )
        with gr.Row():
            with gr.Column(scale=1):
                board = gr.Dataframe(
                    headers=leaderboard.TABLE_HEADERS, interactive=False, elem_id="leaderboard", label="Ratings"
                )
                refresh = gr.Button("Refresh", size="sm")
            with gr.Column(scale=1):
                picture = gr.HTML(
                    leaderboard.interval_plot([]), elem_id="leaderboard-plot", label="Ratings with 95% intervals"
                )
        refresh.click(self.leaderboard, None, [board], api_name="leaderboard", **PANEL)
        return {"leaderboard": board, "leaderboard_plot": picture}

    def build_data(self) -> dict:
        counts = gr.Dataframe(headers=COUNT_HEADERS, interactive=False, label="Counts", elem_id="counts")
        with gr.Row():
            what = gr.Radio(
                [
                    ("Preference pairs (DPO, TRL format)", "pairs"),
                    ("Demonstrations (SFT, TRL messages format)", "demonstrations"),
                    ("Ratings (KTO, TRL unpaired format)", "ratings"),
                    ("Raw votes", "votes"),
                ],
                value="pairs",
                label="Export",
            )
            export_token = gr.Textbox(label="Admin token (raw votes)", type="password", visible=self.page.admin_gated)
            export = gr.Button("Export JSONL", elem_id="export")
        file_out = gr.File(label="Download", elem_id="export-file", height=90)
        export_message = gr.Markdown(label="message")
        with gr.Accordion("Push to the Hugging Face Hub", open=False):
            hub_token = gr.Textbox(
                label="Hugging Face token (write access; empty: the server's HF_TOKEN, for an "
                "admin with the admin token only)",
                type="password",
            )
            with gr.Row():
                dataset_repo = gr.Textbox(label="Dataset repo", placeholder="your-name/alignment-playground-votes")
                model_repo = gr.Textbox(
                    label="Model repo for the serving adapter (optional)",
                    placeholder="your-name/alignment-playground-adapter",
                )
            with gr.Row():
                private = gr.Checkbox(label="Private repos", value=True)
                push_token = gr.Textbox(label="Admin token", type="password", visible=self.page.admin_gated)
                push = gr.Button("Push")
            push_message = gr.Markdown(label="message")
        with gr.Accordion("Raw numbers (JSON)", open=False):
            stats = gr.JSON(label="stats")
            stats_btn = gr.Button("Refresh", size="sm")

        stats_btn.click(self.stats, None, [stats], api_name="stats", **PANEL)
        export.click(self.export, [what, export_token], [file_out, export_message], api_name="export", **DATA)
        push.click(
            self.push,
            [hub_token, dataset_repo, model_repo, private, push_token],
            [push_message],
            api_name="push",
            **DATA,
        )
        return {"counts": counts, "stats": stats}
