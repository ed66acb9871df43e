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
import uuid

import gradio as gr

from ..generation import ARM_TITLES, ARMS
from ..recording import ChatTurn
from ..store import StoreError
from .chat import stream_answers
from .compare_layout import build as build_layout
from .compare_votes import CompareVotes
from .page import Page, session
from .text import answer_dict, blind_title, chat_column, kept_label, meta, title, transcript

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


class CompareTab(CompareVotes):
    hint = NEW_CHAT_HINT  # what the tab says before the first message

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

    def build(self, examples: list[str]) -> None:
        """The components, wired to these handlers (compare_layout.py)."""
        build_layout(self, examples)
