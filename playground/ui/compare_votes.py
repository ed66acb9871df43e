"""The Compare tab's verdicts on the latest turn: best (or a full ranking), all bad, good/bad on one answer, a better
answer written by the person, and which answer the next message continues from. A verdict reveals the names of a
blind turn."""

from __future__ import annotations

import re

import gradio as gr

from ..generation import ARM_TITLES
from ..store import VoteError
from .chat import vote_problem
from .page import Page, session
from .text import meta, title


class CompareVotes:
    """The verdict handlers of `CompareTab` (which is one of these)."""

    page: Page

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
            receipt = self.page.playground.store.add_correction(
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
            state, lambda sid, voter: pg.store.vote_best(sid, state["comparison"], ids, voter=voter), request, profile
        )

    def vote_all_bad(self, state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        problem = vote_problem(self.page, state, request, "compare", profile)
        if problem:
            return problem, *[gr.skip()] * 6, state
        pg = self.page.playground
        return self._verdict(
            state, lambda sid, voter: pg.store.vote_all_bad(sid, state["comparison"], voter=voter), request, profile
        )

    def _verdict(self, state, vote, request, profile):
        try:
            receipt = vote(session(request), self.page.voter(request, profile))
        except VoteError as error:
            return f"⚠ {error}", *[gr.skip()] * 6, state
        state = dict(state)
        return f"✓ {receipt.message}{self.page.reward_verdict(receipt)}", *self.revealed(state), state

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
            receipt = self.page.playground.store.vote_thumb(
                session(request), state["answers"][key], bool(up), voter=self.page.voter(request, profile)
            )
        except VoteError as error:
            return f"⚠ {error}"
        return f"✓ {receipt.message}"

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
