"""The Compare tab: a conversation with three models at once. One message box; every turn the base, SFT and
preference-tuned models answer the same conversation, each in its own chat column, streamed. Votes (best, a full
ranking, all bad, good/bad on one answer), "continue from this" and "write a better answer" apply to the latest
turn. Blind mode hides the names until a verdict.

The conversation is shared: each turn goes on with one answer of the previous turn (the store's rule: the person's
better answer, else the answer their vote put first, else the one they chose to continue from, else the
preference-tuned one), so every training pair's chosen and rejected answers follow the identical conversation.

Per-session state (`gr.State`) holds ids and display labels only: the chat, the latest turn (comparison) and its
answers, the turn it followed, the column order. The voter's session id is Gradio's own session hash (one per page
load, one per API client), so it cannot be forged through a State value.
"""

from __future__ import annotations

import random
import re
import uuid

import gradio as gr

from ..core import ChatTurn
from ..generation import ARM_TITLES, ARMS
from ..store import StoreError, VoteError
from .common import (
    GENERATION,
    VOTES,
    Page,
    answer_dict,
    blind_title,
    chat_column,
    fixed,
    kept_label,
    meta,
    sampling_controls,
    session,
    stream_answers,
    title,
    transcript,
    vote_problem,
)
from .explain import ExplainView

NEW_CHAT_HINT = "New conversation: type a message below. Every turn, all three models answer the same conversation."


def new_state(blind: bool = False) -> dict:
    return {
        "mode": "compare",
        "chat": uuid.uuid4().hex,
        "comparison": None,
        "answers": {},
        "order": list(ARMS),
        "blind": bool(blind),
        "revealed": not blind,
        "streaming": False,
        "after": None,
        "continue_from": None,
        "prompt": None,
        "kept": [],
    }


class CompareTab:
    def __init__(self, page: Page):
        self.page = page

    # -- answers -------------------------------------------------------------------------------------------
    def chat(
        self,
        message,
        temperature=None,
        top_p=None,
        max_new_tokens=None,
        seed=None,
        current=None,
        request: gr.Request = None,
    ):
        """The next turn of the caller's conversation (a new one if there is none): three answers streamed into
        the columns. Yields (header, chat, details) x 3, status, state."""
        base = current or new_state()
        yield from self._turn(
            message,
            (temperature, top_p, max_new_tokens, seed),
            base,
            base.get("comparison"),
            base.get("continue_from"),
            base.get("kept", []),
            request,
            unchanged=current,
        )

    def compare(
        self, prompt, temperature, top_p, max_new_tokens, seed, blind, current=None, request: gr.Request = None
    ):
        """A new conversation whose first message is `prompt` (blind: names hidden until a verdict)."""
        yield from self._turn(
            prompt,
            (temperature, top_p, max_new_tokens, seed),
            new_state(blind),
            None,
            None,
            [],
            request,
            unchanged=current,
        )

    def regenerate(self, prompt, temperature, top_p, max_new_tokens, blind, current, request: gr.Request = None):
        """The latest message again with fresh seeds (same conversation before it): new answers to vote on."""
        base = current or new_state(blind)
        prompt = base.get("prompt") or prompt
        kept = base.get("kept", [])[:-1] if base.get("after") else []
        yield from self._turn(
            prompt,
            (temperature, top_p, max_new_tokens, None),
            base,
            base.get("after"),
            base.get("after_choice"),
            kept,
            request,
            unchanged=current,
        )

    def _turn(self, prompt, sampling_args, current, after, continue_from, kept, request, unchanged=None):
        """One turn: `current` the conversation it belongs to, `after`/`continue_from` where it goes on from;
        `unchanged` is what the caller's state stays when the turn cannot start."""
        pg = self.page.playground
        defaults = self.page.defaults
        sampling_args = tuple(
            d if v is None else v
            for v, d in zip(sampling_args, (defaults.temperature, defaults.top_p, defaults.max_new_tokens, None))
        )
        blind = current.get("blind", False)
        order = random.SystemRandom().sample(ARMS, len(ARMS)) if blind else list(ARMS)
        chat_id = current.get("chat") or uuid.uuid4().hex
        try:
            history, parent = pg.continue_after(session(request), after, continue_from)
        except StoreError as error:
            yield *[gr.skip()] * 9, f"⚠ {error}", unchanged
            return
        kept = kept + ([kept_label(parent)] if parent else [])
        earlier = transcript(history, kept)
        text = str(prompt or "")
        state = {
            "mode": "compare",
            "chat": chat_id,
            "comparison": None,
            "answers": {},
            "order": order,
            "blind": blind,
            "revealed": not blind,
            "streaming": True,
            "after": after,
            "after_choice": continue_from,
            "continue_from": None,
            "prompt": text.strip(),
            "kept": kept,
        }

        def render(answers, recorded):
            rows = {key: answer_dict(a) for key, a in answers.items()}
            columns = self.columns(rows, state, earlier, text)
            dropped = max((r.get("dropped_turns") or 0) for r in rows.values()) if rows else 0
            note = (
                f" The conversation no longer fits every model: the oldest {dropped} turn(s) were left out "
                "(see the details under each column)."
                if dropped
                else ""
            )
            if recorded is None:
                return columns, "Writing three answers" + (
                    " (blind: names hidden until you vote)…" if blind else "…"
                ) + note
            turn = len(history) // 2 + 1
            return columns, (
                f"Turn {turn} · Which answer is best? Click **Best** under it, rank all three, or mark them all bad; "
                "Good/Bad rate one answer on its own. **Continue from this** picks the answer your next message "
                "follows (default: your vote's winner, else the preference-tuned one), or write a better answer "
                f"below. (Comparison #{recorded.comparison_id}){note}"
            )

        turn = ChatTurn(chat_id, after, continue_from)
        yield from stream_answers(
            self.page,
            text,
            sampling_args,
            unchanged,
            state,
            9,
            render,
            lambda sampling: pg.compare(
                text, sampling, session(request), self.page.categories.get(text.strip()), chat=turn
            ),
        )

    @staticmethod
    def columns(rows: dict[str, dict], state: dict, earlier: list[dict], prompt: str) -> list:
        out = []
        for column, key in enumerate(state["order"]):
            row = rows[key]
            header = (
                title(row["arm"], row["model"], row["adapter_version"]) if state["revealed"] else blind_title(column)
            )
            chat = chat_column(earlier, prompt, row["text"], row.get("done", False))
            out += [header, chat, meta(row, state["revealed"])]
        return out

    def revealed(self, state: dict) -> list:
        """Headers and meta lines of the current turn, names shown (after a verdict)."""
        comparison = self.page.playground.store.comparison(state["comparison"])
        by_id = {a["id"]: a for a in comparison["answers"]}
        state["revealed"] = True
        out = []
        for key in state["order"]:
            row = by_id[state["answers"][key]]
            out += [title(row["arm"], row["model"], row["adapter_version"]), meta(row, True)]
        return out

    def new_chat(self, blind=False):
        """Forget the conversation (nothing stored is deleted): the next message starts a new one."""
        fresh = [(f"#### {ARM_TITLES[arm]}", [], "") for arm in ARMS]
        return (*[c for column in fresh for c in column], NEW_CHAT_HINT, new_state(blind))

    def stopped(self, state):
        """Stop pressed: the answers being written are dropped (never stored), the conversation stays as it was."""
        if not state or not state.get("streaming"):
            return "Nothing is being written.", state
        return (
            "Stopped: those answers were not saved. Send the message again, or another one.",
            {**state, "streaming": False, "comparison": None, "answers": {}},
        )

    # -- the latest turn: what the conversation goes on with -----------------------------------------------
    def continue_from(self, column, state, request: gr.Request = None):
        """column 1-3 as shown: the next message continues from that answer (a vote's winner still comes first)."""
        problem = self._latest_turn_problem(state)
        if problem:
            return problem, state
        try:
            column = int(column)
        except (TypeError, ValueError):
            column = 0
        if not 1 <= column <= len(state["order"]):
            return f"⚠ Name a column from 1 to {len(state['order'])}.", state
        key = state["order"][column - 1]
        state = {**state, "continue_from": state["answers"][key]}
        who = ARM_TITLES[key] if state.get("revealed") else f"answer {column}"
        return f"✓ Your next message continues from {who}'s answer.", state

    def correct(self, text, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        """A better answer to the latest turn: kept as a demonstration, the chosen side of a pair against each model
        answer, and what the next message continues from."""
        problem = vote_problem(self.page, state, request, "compare", profile)
        if problem:
            return problem, state
        try:
            receipt = self.page.playground.correct(
                session(request), state["comparison"], str(text or ""), voter=self.page.voter(request, profile)
            )
        except VoteError as error:
            return f"⚠ {error}", state
        return f"✓ {receipt.message}", state

    @staticmethod
    def _latest_turn_problem(state) -> str | None:
        if not state or state.get("mode") != "compare" or state.get("comparison") is None:
            return "⚠ Nothing to continue from yet: send a message first."
        if state.get("streaming"):
            return "⚠ The answers are still being written."
        return None

    # -- votes ---------------------------------------------------------------------------------------------
    # Every vote handler takes `profile`, the signed-in Hugging Face user (Gradio injects it; None when signed out).
    def vote_best(self, ranking, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        """ranking: column numbers best first, "2" (just the best) or "2,1,3" (all three)."""
        problem = vote_problem(self.page, state, request, "compare", profile)
        if problem:
            return problem, *[gr.skip()] * 6, state
        columns = [int(n) for n in re.findall(r"\d+", str(ranking or ""))]
        if not columns or any(not 1 <= c <= len(state["order"]) for c in columns):
            return (
                "⚠ Rank by column number: `2` for just the best, or `2,1,3` for all three (best first).",
                *[gr.skip()] * 6,
                state,
            )
        ids = [state["answers"][state["order"][c - 1]] for c in columns]
        pg = self.page.playground
        return self._verdict(
            state, lambda sid, voter: pg.vote_best(sid, state["comparison"], ids, voter=voter), request, profile
        )

    def vote_all_bad(self, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        problem = vote_problem(self.page, state, request, "compare", profile)
        if problem:
            return problem, *[gr.skip()] * 6, state
        pg = self.page.playground
        return self._verdict(
            state, lambda sid, voter: pg.vote_all_bad(sid, state["comparison"], voter=voter), request, profile
        )

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
            receipt = self.page.playground.vote_thumb(
                session(request), state["answers"][key], bool(up), voter=self.page.voter(request, profile)
            )
        except VoteError as error:
            return f"⚠ {error}"
        return f"✓ {receipt.message}"

    # -- layout --------------------------------------------------------------------------------------------
    def build(self, examples: list[str]) -> None:
        state = gr.State(None)
        message = gr.Markdown(NEW_CHAT_HINT, elem_id="compare-status", label="message")
        columns, best_buttons, thumbs, continues = [], [], [], []
        with gr.Row(equal_height=True):
            for i, arm in enumerate(ARMS):
                with gr.Column():
                    header = gr.Markdown(f"#### {ARM_TITLES[arm]}", elem_id=f"header-{i + 1}", label=f"title {i + 1}")
                    # Markdown renders; HTML does not (sanitize_html, and `shown()` escapes it before it gets here).
                    chat = gr.Chatbot(
                        label=f"answer {i + 1}",
                        show_label=False,
                        height=420,
                        elem_id=f"answer-{i + 1}",
                        elem_classes=["pg-answer"],
                        sanitize_html=True,
                        render_markdown=True,
                        allow_tags=False,
                        feedback_options=None,
                        buttons=["copy"],
                        placeholder="The answers appear here.",
                    )
                    with gr.Row():
                        best_buttons.append(gr.Button("★ Best", elem_id=f"best-{i + 1}", size="sm"))
                        thumbs.append(
                            (
                                gr.Button("Good", elem_id=f"up-{i + 1}", size="sm", min_width=40),
                                gr.Button("Bad", elem_id=f"down-{i + 1}", size="sm", min_width=40),
                            )
                        )
                        continues.append(gr.Button("↪ Continue from this", elem_id=f"continue-{i + 1}", size="sm"))
                    details = gr.Markdown(elem_id=f"meta-{i + 1}", elem_classes=["pg-meta"], label=f"details {i + 1}")
                columns.append((header, chat, details))
        with gr.Row():
            box = gr.Textbox(
                label="Message",
                placeholder="Ask something… (Enter sends)",
                lines=1,
                max_lines=8,
                elem_id="prompt",
                scale=6,
                autofocus=True,
            )
            send = gr.Button("Send", variant="primary", elem_id="compare-btn", scale=1)
            stop = gr.Button("Stop", elem_id="stop-btn", scale=1)
        with gr.Row():
            new_chat = gr.Button("New chat", elem_id="new-prompt-btn", size="sm")
            regenerate = gr.Button("Regenerate", elem_id="regenerate-btn", size="sm")
            blind = gr.Checkbox(
                label="Blind mode (hide model names until you vote; applies to a new chat)",
                value=False,
                elem_id="blind",
            )
        sampling = sampling_controls(self.page.defaults)
        gr.Examples([[e] for e in examples], inputs=[box], label="Example prompts")
        with gr.Row():
            all_bad = gr.Button("All three are bad", elem_id="all-bad")
            ranking = gr.Textbox(
                label="Or rank all three (column numbers, best first), then Enter",
                placeholder="e.g. 2,1,3",
                elem_id="ranking",
                scale=2,
            )
        vote_message = gr.Markdown(elem_id="vote-status", label="vote message")
        with gr.Accordion("Write a better answer to the latest turn", open=False):
            better = gr.Textbox(
                label="Your answer",
                lines=4,
                elem_id="correction",
                info="Kept as a demonstration (SFT data), preferred over every model answer of the "
                "turn (DPO pairs), and the conversation continues from it.",
            )
            submit_better = gr.Button("Submit better answer", elem_id="correction-btn")
        ExplainView(
            self.page,
            [(ARM_TITLES[arm], arm) for arm in ARMS] + [("Your better answer", "human")],
            "compare",
            default="pref",
        ).build(state)
        # API-only inputs: a thumb names its column and direction; continue_from names a column.
        thumb_column = gr.Number(visible=False, precision=0, label="column")
        thumb_up = gr.Checkbox(visible=False, label="up")
        thumb_api = gr.Button(visible=False)
        continue_api = gr.Button(visible=False)
        chat_api = gr.Button(visible=False)
        new_chat_api = gr.Button(visible=False)
        sent = gr.State("")  # the message as sent, so the box can be cleared at once

        outputs = [c for column in columns for c in column] + [message, state]
        chat_event = chat_api.click(self.chat, [box, *sampling, state], outputs, api_name="chat", **GENERATION)
        compare_api = gr.Button(visible=False)
        compare_event = compare_api.click(
            self.compare, [box, *sampling, blind, state], outputs, api_name="compare", **GENERATION
        )

        def take(text):
            return "", text

        events = [chat_event, compare_event]
        for trigger in (box.submit, send.click):
            events.append(
                trigger(take, [box], [box, sent], queue=False, api_visibility="private").then(
                    self.chat, [sent, *sampling, state], outputs, api_visibility="private", **GENERATION
                )
            )
        events.append(
            regenerate.click(
                self.regenerate, [box, *sampling[:3], blind, state], outputs, api_name="regenerate", **GENERATION
            )
        )
        # Cancel first, then settle the state: set in the same event, a streamed update of the cancelled answers could
        # still arrive after it and mark them as being written again.
        stop.click(None, None, None, cancels=events, api_visibility="private", queue=False).then(
            self.stopped, [state], [message, state], api_visibility="private", queue=False
        )
        clear = [*outputs[:-2], message, state]
        new_chat_api.click(self.new_chat, None, clear, api_name="new_chat", queue=False)  # first: it keeps the name
        new_chat.click(self.new_chat, [blind], clear, api_visibility="private", queue=False)

        reveal = [vote_message] + [c for column in columns for c in (column[0], column[2])] + [state]
        ranking.submit(self.vote_best, [ranking, state], reveal, api_name="vote_best", **VOTES)
        for i, button in enumerate(best_buttons):
            button.click(fixed(self.vote_best, str(i + 1)), [state], reveal, api_visibility="private", **VOTES)
        all_bad.click(self.vote_all_bad, [state], reveal, api_name="vote_all_bad", **VOTES)
        thumb_api.click(
            self.vote_thumb, [thumb_column, thumb_up, state], [vote_message], api_name="vote_thumb", **VOTES
        )
        for i, (up, down) in enumerate(thumbs):
            up.click(fixed(self.vote_thumb, i + 1, True), [state], [vote_message], api_visibility="private", **VOTES)
            down.click(fixed(self.vote_thumb, i + 1, False), [state], [vote_message], api_visibility="private", **VOTES)
        continue_api.click(
            self.continue_from, [thumb_column, state], [vote_message, state], api_name="continue_from", **VOTES
        )
        for i, button in enumerate(continues):
            button.click(
                column_handler(self.continue_from, i + 1),
                [state],
                [vote_message, state],
                api_visibility="private",
                **VOTES,
            )
        submit_better.click(self.correct, [better, state], [vote_message, state], api_name="correct", **VOTES).then(
            lambda reply, text: "" if str(reply).startswith("✓") else text,
            [vote_message, better],
            [better],
            api_visibility="private",
            queue=False,
        )  # a saved answer leaves the box; a refused one stays to fix


def column_handler(method, column):
    """`method(column, state, request)` for one column's button (keeps gr.Request injection working)."""

    def handler(state, request: gr.Request = None):
        return method(column, state, request)

    return handler
