"""Why this answer: each token of an answer coloured by DPO's implicit reward under the serving version (explain.py),
with the total and the tokens pushed most each way. One view under each chat tab, for any answer of any turn of
the conversation on the page; the `explain` endpoint does the same for any stored comparison."""

from __future__ import annotations

import gradio as gr

from ..explain import SHADES, summary
from ..generation import AdapterError
from ..prompting import PromptError
from ..store import StoreError
from .page import Page, session

EXPLAIN = {"concurrency_id": "explain", "concurrency_limit": 1}  # a forward pass or two on the SFT weights
HOW_TO_READ = (
    "Each token is coloured by how much more (blue) or less (orange) likely the preference-tuned model "
    "makes it than the SFT model, relative to the answer's most changed token: β·(log π_θ − log π_SFT), "
    "DPO's implicit reward, summed over the answer. "
    "Votes for an answer raise this reward on its tokens; votes against it lower them. For a base or SFT "
    "answer it shows how the preference-tuned model would score it."
)


class ExplainView:
    def __init__(self, page: Page, choices: list[tuple[str, str]], prefix: str, default: str | None = None):
        """choices: (label, arm) for the radio (default: the one selected at first); prefix: of the components'
        element ids."""
        self.page, self.choices, self.prefix, self.default = page, choices, prefix, default

    def explain_turn(self, arm, turn, state, request: gr.Request = None):
        """(highlighted tokens, summary) of one answer of the page's conversation. turn: 1, 2, … (0: the latest)."""
        if not state or state.get("comparison") is None:
            return None, "⚠ Nothing to explain yet: send a message first."
        if state.get("streaming"):
            return None, "⚠ The answers are still being written."
        store = self.page.playground.store
        turns = store.conversation(state["comparison"])
        try:
            number = int(turn or 0)
        except (TypeError, ValueError):
            number = 0
        if not 0 <= number <= len(turns):
            return None, f"⚠ This conversation has {len(turns)} turn(s): pick 1 to {len(turns)} (0 = the latest)."
        number = number or len(turns)
        target = turns[number - 1]
        if (
            target["id"] == state["comparison"]
            and state.get("blind")
            and not state.get("revealed")
            and not store.has_voted(session(request), target["id"])
        ):
            return None, "⚠ Blind mode: vote on this turn first; its explanation would tell which model wrote what."
        try:
            result = self.page.playground.explain(target["id"], arm)
        except (StoreError, PromptError, AdapterError) as error:
            return None, f"⚠ {error}"
        return result.highlighted(), f"{summary(result)}  \n*(Turn {number}, comparison #{target['id']}.)*"

    def build(self, state: gr.State) -> None:
        p = self.prefix
        with gr.Accordion("Why this answer? What the votes taught the model", open=False, elem_id=f"{p}-explain"):
            gr.Markdown(HOW_TO_READ, elem_classes=["pg-meta"])
            with gr.Row():
                arm = gr.Radio(self.choices, value=self.default, label="Answer", elem_id=f"{p}-explain-arm")
                turn = gr.Number(
                    value=0, precision=0, minimum=0, label="Turn (0 = the latest)", elem_id=f"{p}-explain-turn"
                )
                go = gr.Button("Explain", elem_id=f"{p}-explain-btn")
            tokens = gr.HighlightedText(
                label="Implicit reward per token",
                color_map=SHADES,
                show_legend=True,
                show_inline_category=False,
                combine_adjacent=False,
                elem_id=f"{p}-explain-tokens",
                elem_classes=["pg-explain"],
            )
            told = gr.Markdown(elem_id=f"{p}-explain-summary", label="explanation")
        go.click(self.explain_turn, [arm, turn, state], [tokens, told], api_visibility="private", **EXPLAIN)


def explain_endpoint(page: Page) -> None:
    """The public `explain` endpoint (hidden inputs: comparison id, arm, version): the JSON `python -m playground
    explain --json` prints, for any stored comparison."""

    def explain(comparison, arm, version=None) -> dict:
        try:
            version = None if version in (None, "") else int(version)
            return page.playground.explain(int(comparison), str(arm or ""), version).to_dict()
        except (TypeError, ValueError) as error:
            raise gr.Error(
                "Give a comparison id (a number), an arm (base, sft, pref, human; a duel's a or b) and "
                "optionally a version number."
            ) from error
        except (StoreError, PromptError, AdapterError) as error:
            raise gr.Error(str(error)) from error

    comparison = gr.Number(visible=False, precision=0, label="comparison")
    arm = gr.Textbox(visible=False, label="arm")
    version = gr.Number(visible=False, precision=0, label="version", value=None)
    result = gr.JSON(visible=False, label="explanation")
    button = gr.Button(visible=False)
    button.click(explain, [comparison, arm, version], [result], api_name="explain", **EXPLAIN)
