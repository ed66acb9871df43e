"""What the Compare and Duel tabs share: checking a prompt, streaming answers into the page, checking a vote, the
sampling settings."""

from __future__ import annotations

import logging
import time

import gradio as gr

from ..prompting import PromptError, check_prompt
from ..settings import Sampling
from .page import Page
from .text import code

log = logging.getLogger(__name__)

STREAM_INTERVAL = 0.1  # seconds between streamed updates: the browser cannot show more, the socket need not carry it


def sampling(temperature, top_p, max_new_tokens, seed) -> Sampling:
    seed = None if seed in (None, "") else int(seed)
    return Sampling(float(temperature), float(top_p), int(max_new_tokens), seed).checked()


def generation_problem(page: Page, prompt) -> str | None:
    try:
        check_prompt(prompt)
    except PromptError as error:
        return f"⚠ {error}"
    return None if page.ready else page.not_ready_message()


def stream_answers(page: Page, prompt, sampling_args, current, state, n_outputs, render, start):
    """Check the prompt and settings, stream at most every STREAM_INTERVAL (the last update, which carries the
    stored ids, always), and turn any failure into a message on the page. Yields (*outputs, message, state)."""
    keep = [gr.skip()] * n_outputs
    problem = generation_problem(page, prompt)
    if problem:
        yield *keep, problem, current
        return
    try:
        stream = start(sampling(*sampling_args))
        last = 0.0
        for answers, recorded in stream:
            now = time.monotonic()
            finished = all(answer.done for answer in answers.values())
            if recorded is None and not finished and now - last < STREAM_INTERVAL:
                continue
            last = now
            if recorded is not None:
                state |= {"comparison": recorded.comparison_id, "answers": recorded.answer_ids, "streaming": False}
            outputs, status = render(answers, recorded)
            failed = next((answer.error for answer in answers.values() if answer.error), None)
            if failed and finished:
                state |= {"streaming": False}
                status = f"⚠ Not saved: an answer could not be written. {failed} Ask again once it is back."
            yield *outputs, status, state
        if state.get("comparison") is not None:  # written and stored: now the reward model's scores, never before
            scored = _score(page, state["comparison"], answers, state["answers"])
            if scored:
                outputs, status = render(answers, recorded)
                yield *outputs, status, state
    except (PromptError, ValueError) as error:
        yield *keep, f"⚠ {error}", current if state["comparison"] is None else None
    except Exception as error:  # a crash mid-stream: say so; nothing was recorded
        log.exception("Generation failed")
        yield *keep, f"⚠ Generation failed: {code(error)}", None


def _score(page: Page, comparison_id: int, answers: dict, answer_ids: dict) -> bool:
    """Put the serving reward model's score on each answer (reward_version 0: none yet); False if scoring failed
    (the answers stand as they are)."""
    try:
        scored = page.playground.reward_scores(comparison_id)
    except Exception:  # a score is a view: the answers and votes never depend on it
        log.exception("Scoring the answers of comparison %s failed", comparison_id)
        return False
    for key, answer in answers.items():
        answer.reward_version = scored["reward_version"] or 0
        answer.reward = scored["scores"].get(answer_ids.get(key))
    return True


def vote_problem(page: Page, state, request, mode: str, profile=None) -> str | None:
    if page.require_login and profile is None:
        return "⚠ Sign in with Hugging Face to vote: the button at the top of the page."
    problem = page.vote_limit_problem(request)
    if problem:
        return problem
    if not state or state.get("mode") != mode:
        return "⚠ Nothing to vote on yet: ask something first."
    if state.get("streaming"):
        return "⚠ The answers are still being written; vote when they are complete."
    if state.get("comparison") is None:  # a new chat, or answers stopped before they were saved
        return "⚠ Nothing to vote on yet: ask something first."
    return None


def sampling_controls(defaults: Sampling):
    with gr.Accordion("Sampling settings", open=False):
        temperature = gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature (0 = greedy)")
        top_p = gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="top_p")
        tokens = gr.Slider(8, 512, value=min(max(defaults.max_new_tokens, 8), 512), step=8, label="Max new tokens")
        seed = gr.Number(value=defaults.seed, precision=0, label="Seed (empty = random)")
    return [temperature, top_p, tokens, seed]


def answer_box(label: str, elem_id: str, height: int, placeholder: str | None = None) -> gr.Chatbot:
    """A column that shows one model's answer in its conversation. Markdown renders; HTML does not (sanitize_html,
    and `text.shown()` escapes it before it gets here)."""
    return gr.Chatbot(
        label=label,
        show_label=False,
        height=height,
        elem_id=elem_id,
        elem_classes=["pg-answer"],
        sanitize_html=True,
        render_markdown=True,
        allow_tags=False,
        feedback_options=None,
        buttons=["copy"],
        placeholder=placeholder,
    )
