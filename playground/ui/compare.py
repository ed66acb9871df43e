"""The Compare tab: one prompt, three streamed answers (base, SFT, preference-tuned), and the votes on them (best,
a full ranking, all bad, good/bad on one answer). Blind mode hides the names until a verdict.

Per-session state (`gr.State`) holds ids only: the comparison, its answers' ids and the column order. The voter's
session id is Gradio's own session hash (one per page load, one per API client), so it cannot be forged through a
State value.
"""

from __future__ import annotations

import random
import re

import gradio as gr

from ..generation import ARM_TITLES, ARMS
from ..store import VoteError
from .common import (GENERATION, VOTES, Page, answer_dict, blind_title, fixed, meta, prompt_box, sampling_controls,
                     session, stream_answers, title, vote_problem)


class CompareTab:
    def __init__(self, page: Page):
        self.page = page

    # -- answers -------------------------------------------------------------------------------------------
    def compare(self, prompt, temperature, top_p, max_new_tokens, seed, blind, current, request: gr.Request = None):
        """Stream three answers into the columns; yields (header, text, meta) x 3, status, state."""
        order = random.SystemRandom().sample(ARMS, len(ARMS)) if blind else list(ARMS)
        state = {"mode": "compare", "comparison": None, "answers": {}, "order": order, "blind": bool(blind),
                 "revealed": not blind, "streaming": True}

        def render(answers, recorded):
            rows = {key: answer_dict(a) for key, a in answers.items()}
            if recorded is None:
                return self.columns(rows, state), "Writing three answers" + (
                    " (blind: names hidden until you vote)…" if blind else "…")
            return self.columns(rows, state), (
                "Which answer is best? Click **Best** under it, rank all three, or mark them all bad. "
                f"Good/Bad rate one answer on its own. (Comparison #{recorded.comparison_id})")

        pg = self.page.playground
        yield from stream_answers(self.page, prompt, (temperature, top_p, max_new_tokens, seed), current, state, 9,
                                  render, lambda sampling: pg.compare(prompt, sampling, session(request),
                                                                      self.page.categories.get(prompt.strip())))

    def regenerate(self, prompt, temperature, top_p, max_new_tokens, blind, current, request: gr.Request = None):
        """The same prompt again with fresh random seeds: new answers to compare (and a new comparison to vote on)."""
        yield from self.compare(prompt, temperature, top_p, max_new_tokens, None, blind, current, request)

    @staticmethod
    def columns(rows: dict[str, dict], state: dict) -> list:
        out = []
        for column, key in enumerate(state["order"]):
            row = rows[key]
            header = title(row["arm"], row["model"], row["adapter_version"]) if state["revealed"] else blind_title(column)
            out += [header, row["text"], meta(row, state["revealed"])]
        return out

    def revealed(self, state: dict) -> list:
        """Headers and meta lines of the current comparison, names shown (after a verdict)."""
        comparison = self.page.playground.store.comparison(state["comparison"])
        by_id = {a["id"]: a for a in comparison["answers"]}
        state["revealed"] = True
        rows = {key: by_id[answer_id] for key, answer_id in state["answers"].items()}
        columns = self.columns(rows, state)
        return [columns[i] for i in range(len(columns)) if i % 3 != 1]  # headers and meta lines, not the texts

    # -- votes ---------------------------------------------------------------------------------------------
    # Every vote handler takes `profile`, the signed-in Hugging Face user (Gradio injects it; None when signed out).
    def vote_best(self, ranking, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        """ranking: column numbers best first, "2" (just the best) or "2,1,3" (all three)."""
        problem = vote_problem(self.page, state, request, "compare", profile)
        if problem:
            return problem, *[gr.skip()] * 6, state
        columns = [int(n) for n in re.findall(r"\d+", str(ranking or ""))]
        if not columns or any(not 1 <= c <= len(state["order"]) for c in columns):
            return ("⚠ Rank by column number: `2` for just the best, or `2,1,3` for all three (best first).",
                    *[gr.skip()] * 6, state)
        ids = [state["answers"][state["order"][c - 1]] for c in columns]
        pg = self.page.playground
        return self._verdict(state, lambda sid, voter: pg.vote_best(sid, state["comparison"], ids, voter=voter),
                             request, profile)

    def vote_all_bad(self, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        problem = vote_problem(self.page, state, request, "compare", profile)
        if problem:
            return problem, *[gr.skip()] * 6, state
        pg = self.page.playground
        return self._verdict(state, lambda sid, voter: pg.vote_all_bad(sid, state["comparison"], voter=voter),
                             request, profile)

    def _verdict(self, state, vote, request, profile):
        try:
            receipt = vote(session(request), self.page.voter(request, profile))
        except VoteError as error:
            return f"⚠ {error}", *[gr.skip()] * 6, state
        state = dict(state)
        return f"✓ {receipt.message}", *self.revealed(state), state

    def vote_thumb(self, column, up, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        """column: 1-3 as shown; up: True for 👍."""
        problem = vote_problem(self.page, state, request, "compare", profile)
        if problem:
            return problem
        try:
            column = int(column)
        except (TypeError, ValueError):
            column = 0
        if not 1 <= column <= len(state["order"]):
            return f"⚠ Name a column from 1 to {len(state['order'])}."
        key = state["order"][column - 1]
        try:
            receipt = self.page.playground.vote_thumb(session(request), state["answers"][key], bool(up),
                                                      voter=self.page.voter(request, profile))
        except VoteError as error:
            return f"⚠ {error}"
        return f"✓ {receipt.message}"

    # -- layout --------------------------------------------------------------------------------------------
    def build(self, examples: list[str]) -> None:
        state = gr.State(None)
        prompt = prompt_box("prompt")
        with gr.Row():
            go = gr.Button("Compare", variant="primary", elem_id="compare-btn", scale=3)
            regenerate = gr.Button("Regenerate", elem_id="regenerate-btn", scale=1)
            new_prompt = gr.Button("New prompt", elem_id="new-prompt-btn", scale=1)
            blind = gr.Checkbox(label="Blind mode (hide model names until you vote)", value=False, elem_id="blind",
                                scale=2)
        sampling = sampling_controls(self.page.defaults)
        gr.Examples([[e] for e in examples], inputs=[prompt], label="Example prompts")
        message = gr.Markdown(elem_id="compare-status", label="message")
        columns, best_buttons, thumbs = [], [], []
        with gr.Row(equal_height=True):
            for i, arm in enumerate(ARMS):
                with gr.Column():
                    header = gr.Markdown(f"#### {ARM_TITLES[arm]}", elem_id=f"header-{i + 1}", label=f"title {i + 1}")
                    # A fixed height (lines = max_lines) keeps the vote buttons of the columns aligned.
                    text = gr.Textbox(label=f"answer {i + 1}", show_label=False, lines=12, max_lines=12,
                                      interactive=False, elem_id=f"answer-{i + 1}", elem_classes=["pg-answer"],
                                      placeholder="The answer appears here.")
                    with gr.Row():
                        best_buttons.append(gr.Button("★ Best", elem_id=f"best-{i + 1}", size="sm"))
                        thumbs.append((gr.Button("Good", elem_id=f"up-{i + 1}", size="sm", min_width=40),
                                       gr.Button("Bad", elem_id=f"down-{i + 1}", size="sm", min_width=40)))
                    details = gr.Markdown(elem_id=f"meta-{i + 1}", elem_classes=["pg-meta"], label=f"details {i + 1}")
                columns.append((header, text, details))
        with gr.Row():
            all_bad = gr.Button("All three are bad", elem_id="all-bad")
            ranking = gr.Textbox(label="Or rank all three (column numbers, best first), then Enter",
                                 placeholder="e.g. 2,1,3", elem_id="ranking", scale=2)
        vote_message = gr.Markdown(elem_id="vote-status", label="vote message")
        # API-only inputs: a thumb names its column and direction.
        thumb_column = gr.Number(visible=False, precision=0, label="column")
        thumb_up = gr.Checkbox(visible=False, label="up")
        thumb_api = gr.Button(visible=False)

        inputs = [prompt, *sampling, blind, state]
        outputs = [c for column in columns for c in column] + [message, state]
        go.click(self.compare, inputs, outputs, api_name="compare", **GENERATION)
        prompt.submit(self.compare, inputs, outputs, api_visibility="private", **GENERATION)
        regenerate.click(self.regenerate, [prompt, *sampling[:3], blind, state], outputs, api_name="regenerate",
                         **GENERATION)
        fresh = [(f"#### {ARM_TITLES[arm]}", "", "") for arm in ARMS]
        new_prompt.click(lambda: ["", *[c for column in fresh for c in column], "", "", None],
                         None, [prompt, *outputs[:-2], message, vote_message, state],
                         api_visibility="private", queue=False)

        reveal = [vote_message] + [c for column in columns for c in (column[0], column[2])] + [state]
        ranking.submit(self.vote_best, [ranking, state], reveal, api_name="vote_best", **VOTES)
        for i, button in enumerate(best_buttons):
            button.click(fixed(self.vote_best, str(i + 1)), [state], reveal, api_visibility="private", **VOTES)
        all_bad.click(self.vote_all_bad, [state], reveal, api_name="vote_all_bad", **VOTES)
        thumb_api.click(self.vote_thumb, [thumb_column, thumb_up, state], [vote_message], api_name="vote_thumb",
                        **VOTES)
        for i, (up, down) in enumerate(thumbs):
            up.click(fixed(self.vote_thumb, i + 1, True), [state], [vote_message], api_visibility="private", **VOTES)
            down.click(fixed(self.vote_thumb, i + 1, False), [state], [vote_message], api_visibility="private",
                       **VOTES)
