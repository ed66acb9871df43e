"""The Compare tab's components and how their events reach `CompareTab`'s handlers: three chat columns with their
buttons, the message box, blind mode, the ranking box, a better answer, the Why-this-answer view, and the hidden
inputs of the API endpoints (chat, compare, regenerate, new_chat, vote_best, vote_all_bad, vote_thumb,
continue_from, correct)."""

from __future__ import annotations

import gradio as gr

from ..generation import ARM_TITLES, ARMS
from .chat import answer_box, sampling_controls
from .explain import ExplainView
from .wiring import GENERATION, VOTES, column_handler, fixed


def build(tab, examples: list[str]) -> None:
    """The components of `tab` (a CompareTab), wired to its handlers."""
    state = gr.State(None)
    message = gr.Markdown(tab.hint, elem_id="compare-status", label="message")
    columns, best_buttons, thumbs, continues = [], [], [], []
    with gr.Row(equal_height=True):
        for i, arm in enumerate(ARMS):
            with gr.Column():
                header = gr.Markdown(f"#### {ARM_TITLES[arm]}", elem_id=f"header-{i + 1}", label=f"title {i + 1}")
                chat = answer_box(f"answer {i + 1}", f"answer-{i + 1}", 420, "The answers appear here.")
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
            label="Blind mode (hide model names until you vote; applies to a new chat)", value=False, elem_id="blind"
        )
    sampling = sampling_controls(tab.page.defaults)
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
        tab.page,
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
    chat_event = chat_api.click(tab.chat, [box, *sampling, state], outputs, api_name="chat", **GENERATION)
    compare_api = gr.Button(visible=False)
    compare_event = compare_api.click(
        tab.compare, [box, *sampling, blind, state], outputs, api_name="compare", **GENERATION
    )

    def take(text):
        return "", text

    events = [chat_event, compare_event]
    for trigger in (box.submit, send.click):
        events.append(
            trigger(take, [box], [box, sent], queue=False, api_visibility="private").then(
                tab.chat, [sent, *sampling, state], outputs, api_visibility="private", **GENERATION
            )
        )
    events.append(
        regenerate.click(
            tab.regenerate, [box, *sampling[:3], blind, state], outputs, api_name="regenerate", **GENERATION
        )
    )
    # Cancel first, then settle the state: set in the same event, a streamed update of the cancelled answers could
    # still arrive after it and mark them as being written again.
    stop.click(None, None, None, cancels=events, api_visibility="private", queue=False).then(
        tab.stopped, [state], [message, state], api_visibility="private", queue=False
    )
    clear = [*outputs[:-2], message, state]
    new_chat_api.click(tab.new_chat, None, clear, api_name="new_chat", queue=False)  # first: it keeps the name
    new_chat.click(tab.new_chat, [blind], clear, api_visibility="private", queue=False)

    reveal = [vote_message] + [c for column in columns for c in (column[0], column[2])] + [state]
    ranking.submit(tab.vote_best, [ranking, state], reveal, api_name="vote_best", **VOTES)
    for i, button in enumerate(best_buttons):
        button.click(fixed(tab.vote_best, str(i + 1)), [state], reveal, api_visibility="private", **VOTES)
    all_bad.click(tab.vote_all_bad, [state], reveal, api_name="vote_all_bad", **VOTES)
    thumb_api.click(tab.vote_thumb, [thumb_column, thumb_up, state], [vote_message], api_name="vote_thumb", **VOTES)
    for i, (up, down) in enumerate(thumbs):
        up.click(fixed(tab.vote_thumb, i + 1, True), [state], [vote_message], api_visibility="private", **VOTES)
        down.click(fixed(tab.vote_thumb, i + 1, False), [state], [vote_message], api_visibility="private", **VOTES)
    continue_api.click(
        tab.continue_from, [thumb_column, state], [vote_message, state], api_name="continue_from", **VOTES
    )
    for i, button in enumerate(continues):
        button.click(
            column_handler(tab.continue_from, i + 1), [state], [vote_message, state], api_visibility="private", **VOTES
        )
    submit_better.click(tab.correct, [better, state], [vote_message, state], api_name="correct", **VOTES).then(
        lambda reply, text: "" if str(reply).startswith("✓") else text,
        [vote_message, better],
        [better],
        api_visibility="private",
        queue=False,
    )  # a saved answer leaves the box; a refused one stays to fix
