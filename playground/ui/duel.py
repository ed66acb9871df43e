"""The Duel tab: two answers, A and B, either two samples of the preference-tuned model (on-policy pairs, what DPO
learns most from) or one answer each of two arms drawn at random, unnamed until the vote. A, B, tie or both bad."""

from __future__ import annotations

import random

import gradio as gr

from ..generation import ARMS
from ..store import VoteError
from .common import (GENERATION, VOTES, Page, answer_dict, fixed, meta, prompt_box, sampling_controls, session,
                     stream_answers, title, vote_problem)

KEYS = ("a", "b")


class DuelTab:
    def __init__(self, page: Page):
        self.page = page

    def duel(self, prompt, temperature, top_p, max_new_tokens, seed, source, current, request: gr.Request = None):
        """source: "pref" (two samples of the preference-tuned model) or "random" (two arms drawn at random,
        names hidden until the vote)."""
        arms = tuple(random.SystemRandom().sample(ARMS, 2)) if source == "random" else None
        state = {"mode": "duel", "comparison": None, "answers": {}, "streaming": True, "blind": arms is not None}

        def render(answers, recorded):
            out = []
            for key in KEYS:
                row = answer_dict(answers[key])
                who = "" if state["blind"] else f" · preference-tuned v{row['adapter_version']}"
                out += [row["text"], meta(row, False) + who]
                if recorded is not None:
                    state.setdefault("titles", {})[key] = title(row["arm"], row["model"], row["adapter_version"])
            if recorded is None:
                return out, "Writing two answers…"
            return out, f"Which is better, A or B? (Or a tie, or both bad.) (Comparison #{recorded.comparison_id})"

        pg = self.page.playground
        yield from stream_answers(self.page, prompt, (temperature, top_p, max_new_tokens, seed), current, state, 4,
                                  render, lambda sampling: pg.duel(prompt, sampling, session(request),
                                                                   self.page.categories.get(prompt.strip()), arms=arms))

    def vote(self, outcome, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        """outcome: 'a', 'b', 'tie' or 'both_bad'. `profile`: the signed-in Hugging Face user (Gradio injects it)."""
        problem = vote_problem(self.page, state, request, "duel", profile)
        if problem:
            return problem
        try:
            receipt = self.page.playground.vote_pairwise(session(request), state["comparison"], state["answers"]["a"],
                                                         state["answers"]["b"], str(outcome),
                                                         voter=self.page.voter(request, profile))
        except VoteError as error:
            return f"⚠ {error}"
        if state.get("blind") and state.get("titles"):
            return f"✓ {receipt.message} A was {state['titles']['a']}; B was {state['titles']['b']}."
        return f"✓ {receipt.message}"

    def build(self) -> None:
        state = gr.State(None)
        gr.Markdown("Two answers from the **preference-tuned** model (same adapter, different random seeds). "
                    "Picking the better one makes an *on-policy* training pair: DPO learns most from choices "
                    "between answers the model itself would give.")
        prompt = prompt_box("duel-prompt")
        source = gr.Radio([("Preference-tuned model, two samples (on-policy)", "pref"),
                           ("Two arms drawn at random (blind until you vote)", "random")],
                          value="pref", label="Answers from", elem_id="duel-source")
        go = gr.Button("Duel", variant="primary", elem_id="duel-btn")
        sampling = sampling_controls(self.page.defaults)
        message = gr.Markdown(elem_id="duel-status", label="message")
        columns = []
        with gr.Row(equal_height=True):
            for key in KEYS:
                with gr.Column():
                    gr.Markdown(f"#### Answer {key.upper()}")
                    columns.append((
                        gr.Textbox(label=f"answer {key}", show_label=False, lines=12, max_lines=12,
                                   interactive=False, elem_id=f"duel-answer-{key}", elem_classes=["pg-answer"]),
                        gr.Markdown(elem_classes=["pg-meta"], label=f"details {key}")))
        with gr.Row():
            buttons = {"a": gr.Button("A is better", elem_id="duel-a"), "b": gr.Button("B is better", elem_id="duel-b"),
                       "tie": gr.Button("Tie", elem_id="duel-tie"),
                       "both_bad": gr.Button("Both bad", elem_id="duel-both-bad")}
        vote_message = gr.Markdown(elem_id="duel-vote-status", label="vote message")
        outcome = gr.Textbox(visible=False, label="outcome")
        vote_api = gr.Button(visible=False)

        inputs = [prompt, *sampling, source, state]
        outputs = [c for column in columns for c in column] + [message, state]
        go.click(self.duel, inputs, outputs, api_name="duel", **GENERATION)
        prompt.submit(self.duel, inputs, outputs, api_visibility="private", **GENERATION)
        vote_api.click(self.vote, [outcome, state], [vote_message], api_name="vote_duel", **VOTES)
        for name, button in buttons.items():
            button.click(fixed(self.vote, name), [state], [vote_message], api_visibility="private", **VOTES)
