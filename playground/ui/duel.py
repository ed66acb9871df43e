"""The Duel tab: a conversation with two answers per turn, A and B, either two samples of the preference-tuned model
(on-policy pairs, what DPO learns most from) or one answer each of two arms drawn at random, unnamed until the vote.
A, B, tie or both bad. Like Compare, the conversation is shared: the next turn continues from the winner (else the
answer chosen with "continue from this", else A)."""

from __future__ import annotations

import random
import uuid

import gradio as gr

from ..generation import ARMS
from ..recording import ChatTurn
from ..store import StoreError, VoteError
from .chat import answer_box, sampling_controls, stream_answers, vote_problem
from .explain import ExplainView
from .page import Page, session
from .text import answer_dict, chat_column, kept_label, meta, title, transcript
from .wiring import GENERATION, VOTES, fixed

KEYS = ("a", "b")


class DuelTab:
    def __init__(self, page: Page):
        self.page = page

    def duel(self, prompt, temperature, top_p, max_new_tokens, seed, source, current, request: gr.Request = None):
        """The next turn of the caller's duel conversation (a new one if there is none). source: "pref" (two
        samples of the preference-tuned model) or "random" (two arms drawn at random, names hidden until the vote)."""
        arms = tuple(random.SystemRandom().sample(ARMS, 2)) if source == "random" else None
        base = current or {}
        chat_id = base.get("chat") or uuid.uuid4().hex
        after = base.get("comparison")
        kept = list(base.get("kept", []))
        pg = self.page.playground
        try:
            history, parent = pg.continue_after(session(request), after, base.get("continue_from"))
        except StoreError as error:
            yield *[gr.skip()] * 4, f"⚠ {error}", current
            return
        if parent:
            keys = {answer_id: key for key, answer_id in base.get("answers", {}).items()}
            kept.append(f"answer {keys[parent['id']].upper()}" if parent["id"] in keys else kept_label(parent))
        earlier = transcript(history, kept)
        text = str(prompt or "")
        state = {
            "mode": "duel",
            "chat": chat_id,
            "comparison": None,
            "answers": {},
            "streaming": True,
            "blind": arms is not None,
            "kept": kept,
            "continue_from": None,
        }

        def render(answers, recorded):
            out = []
            for key in KEYS:
                row = answer_dict(answers[key])
                who = "" if state["blind"] else f" · preference-tuned v{row['adapter_version']}"
                out += [chat_column(earlier, text, row["text"], row.get("done", False)), meta(row, False) + who]
                if recorded is not None:
                    state.setdefault("titles", {})[key] = title(row["arm"], row["model"], row["adapter_version"])
            if recorded is None:
                return out, "Writing two answers…"
            return out, (
                f"Turn {len(history) // 2 + 1} · Which is better, A or B? (Or a tie, or both bad.) Your "
                f"next message continues from the winner. (Comparison #{recorded.comparison_id})"
            )

        turn = ChatTurn(chat_id, after, base.get("continue_from"))
        yield from stream_answers(
            self.page,
            text,
            (temperature, top_p, max_new_tokens, seed),
            current,
            state,
            4,
            render,
            lambda sampling: pg.duel(
                text, sampling, session(request), self.page.categories.get(text.strip()), arms=arms, chat=turn
            ),
        )

    def continue_from(self, key, state):
        """key 'a' or 'b': the next message continues from that answer (a decisive vote's winner comes first)."""
        if not state or state.get("mode") != "duel" or state.get("comparison") is None:
            return "⚠ Nothing to continue from yet: ask something first.", state
        if state.get("streaming"):
            return "⚠ The answers are still being written.", state
        return f"✓ Your next message continues from answer {key.upper()}.", {
            **state,
            "continue_from": state["answers"][key],
        }

    def new_chat(self):
        return [], "", [], "", "New duel conversation: type a message.", None

    def vote(self, outcome, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        """outcome: 'a', 'b', 'tie' or 'both_bad'. `profile`: the signed-in Hugging Face user (Gradio injects it)."""
        problem = vote_problem(self.page, state, request, "duel", profile)
        if problem:
            return problem
        try:
            receipt = self.page.playground.store.vote_pairwise(
                session(request),
                state["comparison"],
                state["answers"]["a"],
                state["answers"]["b"],
                str(outcome),
                voter=self.page.voter(request, profile),
            )
        except VoteError as error:
            return f"⚠ {error}"
        judged = self.page.reward_verdict(receipt)
        if state.get("blind") and state.get("titles"):
            return f"✓ {receipt.message} A was {state['titles']['a']}; B was {state['titles']['b']}.{judged}"
        return f"✓ {receipt.message}{judged}"

    def build(self) -> None:
        state = gr.State(None)
        gr.Markdown(
            "Two answers from the **preference-tuned** model (same adapter, different random seeds). "
            "Picking the better one makes an *on-policy* training pair: DPO learns most from choices "
            "between answers the model itself would give. The conversation goes on from the winner."
        )
        source = gr.Radio(
            [
                ("Preference-tuned model, two samples (on-policy)", "pref"),
                ("Two arms drawn at random (blind until you vote)", "random"),
            ],
            value="pref",
            label="Answers from",
            elem_id="duel-source",
        )
        message = gr.Markdown(elem_id="duel-status", label="message")
        columns, continues = [], {}
        with gr.Row(equal_height=True):
            for key in KEYS:
                with gr.Column():
                    gr.Markdown(f"#### Answer {key.upper()}")
                    columns.append(
                        (
                            answer_box(f"answer {key}", f"duel-answer-{key}", 380),
                            gr.Markdown(elem_classes=["pg-meta"], label=f"details {key}"),
                        )
                    )
                    continues[key] = gr.Button("↪ Continue from this", elem_id=f"duel-continue-{key}", size="sm")
        with gr.Row():
            prompt = gr.Textbox(
                label="Message",
                placeholder="Ask something… (Enter sends)",
                lines=1,
                max_lines=8,
                elem_id="duel-prompt",
                scale=6,
            )
            go = gr.Button("Duel", variant="primary", elem_id="duel-btn", scale=1)
            new_chat = gr.Button("New chat", elem_id="duel-new-chat", scale=1)
        sampling = sampling_controls(self.page.defaults)
        with gr.Row():
            buttons = {
                "a": gr.Button("A is better", elem_id="duel-a"),
                "b": gr.Button("B is better", elem_id="duel-b"),
                "tie": gr.Button("Tie", elem_id="duel-tie"),
                "both_bad": gr.Button("Both bad", elem_id="duel-both-bad"),
            }
        vote_message = gr.Markdown(elem_id="duel-vote-status", label="vote message")
        ExplainView(self.page, [("Answer A", "a"), ("Answer B", "b")], "duel", default="a").build(state)
        outcome = gr.Textbox(visible=False, label="outcome")
        vote_api = gr.Button(visible=False)

        inputs = [prompt, *sampling, source, state]
        outputs = [c for column in columns for c in column] + [message, state]
        go.click(self.duel, inputs, outputs, api_name="duel", **GENERATION)
        prompt.submit(self.duel, inputs, outputs, api_visibility="private", **GENERATION)
        new_chat.click(self.new_chat, None, outputs, api_visibility="private", queue=False)
        vote_api.click(self.vote, [outcome, state], [vote_message], api_name="vote_duel", **VOTES)
        for name, button in buttons.items():
            button.click(fixed(self.vote, name), [state], [vote_message], api_visibility="private", **VOTES)
        for key, button in continues.items():
            button.click(
                lambda s, key=key: self.continue_from(key, s),
                [state],
                [vote_message, state],
                api_visibility="private",
                **VOTES,
            )
