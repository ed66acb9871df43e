"""The Leaderboard and Data tabs: ratings; counts, downloads (pairs in TRL's format, raw votes) and Hub pushes."""

from __future__ import annotations

import gradio as gr

from .. import leaderboard
from .common import DATA, PANEL, Page

COUNT_HEADERS = ["what", "count"]


def counts_table(counts: dict) -> list[list]:
    kinds = {"best": "best-of-three votes", "all_bad": "all-bad votes", "pairwise": "duel (A/B) votes",
             "thumb": "thumbs"}
    rows = [[label, counts["votes_by_kind"].get(kind, 0)] for kind, label in kinds.items()]
    return rows + [["votes in all", counts["votes"]], ["prompts", counts["prompts"]],
                   ["comparisons", counts["comparisons"]], ["training pairs", counts["pairs"]],
                   ["pairs waiting for a round", counts["pairs_pending"]], ["training rounds", counts["rounds"]],
                   ["adapter versions", counts["versions"]]]


class DataTab:
    def __init__(self, page: Page, panel):
        self.page, self.panel = page, panel

    def leaderboard(self):
        return leaderboard.table(self.page.playground.dashboard.facts()["standings"])

    def stats(self) -> dict:
        return self.panel.stats()

    def export(self, what):
        path, n = self.page.playground.export("votes" if what == "votes" else "pairs")
        noun = ("vote" if what == "votes" else "preference pair") + ("" if n == 1 else "s")
        detail = " with their answers" if what == "votes" else " in TRL's format"
        return str(path), f"✓ {n} {noun}{detail}: {path.name}"

    def push(self, hf_token, dataset_repo, model_repo, private, admin_token):
        refusal = self.page.admin_refusal(admin_token)
        if refusal:
            return refusal
        return self.page.playground.push(hf_token, dataset_repo, model_repo, private=bool(private))

    def build_leaderboard(self) -> dict:
        gr.Markdown(
            "Bradley-Terry ratings (Elo scale, mean 1000) from the votes: a best-of-three winner beats each other "
            "answer, a full ranking gives every implied pair, a duel vote is one game and a tie half a win each way; "
            "all-bad, both-bad, thumbs and identical answers are left out. The preference-tuned arm at version 0 is "
            "the SFT model, so it counts as **sft**. 95% intervals: 200 bootstrap resamples of the votes. The "
            "training pairs come from the same games (a tie makes none).")
        board = gr.Dataframe(headers=leaderboard.TABLE_HEADERS, interactive=False, elem_id="leaderboard",
                             label="Ratings")
        refresh = gr.Button("Refresh", size="sm")
        refresh.click(self.leaderboard, None, [board], api_name="leaderboard", **PANEL)
        return {"leaderboard": board}

    def build_data(self) -> dict:
        counts = gr.Dataframe(headers=COUNT_HEADERS, interactive=False, label="Counts", elem_id="counts")
        with gr.Row():
            what = gr.Radio([("Preference pairs (TRL format)", "pairs"), ("Raw votes", "votes")], value="pairs",
                            label="Export")
            export = gr.Button("Export JSONL", elem_id="export")
        file_out = gr.File(label="Download", elem_id="export-file", height=90)
        export_message = gr.Markdown(label="message")
        with gr.Accordion("Push to the Hugging Face Hub", open=False):
            hub_token = gr.Textbox(label="Hugging Face token (write access; empty = the server's HF_TOKEN)",
                                   type="password")
            with gr.Row():
                dataset_repo = gr.Textbox(label="Dataset repo", placeholder="your-name/alignment-playground-votes")
                model_repo = gr.Textbox(label="Model repo for the serving adapter (optional)",
                                        placeholder="your-name/alignment-playground-adapter")
            with gr.Row():
                private = gr.Checkbox(label="Private repos", value=True)
                push_token = gr.Textbox(label="Admin token", type="password", visible=bool(self.page.admin_token))
                push = gr.Button("Push")
            push_message = gr.Markdown(label="message")
        with gr.Accordion("Raw numbers (JSON)", open=False):
            stats = gr.JSON(label="stats")
            stats_btn = gr.Button("Refresh", size="sm")

        stats_btn.click(self.stats, None, [stats], api_name="stats", **PANEL)
        export.click(self.export, [what], [file_out, export_message], api_name="export", **DATA)
        push.click(self.push, [hub_token, dataset_repo, model_repo, private, push_token], [push_message],
                   api_name="push", **DATA)
        return {"counts": counts, "stats": stats}
