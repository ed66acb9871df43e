"""How the page's events meet the server: queue groups (each with its own concurrency limit), the panels' refresh
period, and handlers for one button of many (fixed first arguments, Gradio's injection kept)."""

from __future__ import annotations

import gradio as gr

# Generation is CPU-bound and the engine serializes each model anyway: two at once keeps both models busy without
# piling up threads. Votes and panel refreshes are quick database calls with their own, higher limits, so a long
# generation never makes a vote or the training panel wait.
GENERATION = {"concurrency_id": "generation", "concurrency_limit": 2}
VOTES = {"concurrency_id": "votes", "concurrency_limit": 8}
PANEL = {"concurrency_id": "panel", "concurrency_limit": 4}
DATA = {"concurrency_id": "data", "concurrency_limit": 1}
QUEUE_SIZE = 64

REFRESH_SECONDS = 2.0


def fixed(method, *fixed_args):
    """`method` with its first arguments fixed (a button per column), keeping gr.Request and gr.OAuthProfile
    injection working: Gradio finds those parameters by their annotations, which functools.partial would hide."""

    def handler(state, request: gr.Request = None, profile: gr.OAuthProfile | None = None):
        return method(*fixed_args, state, request, profile)

    return handler


def column_handler(method, column):
    """`method(column, state, request)` for one column's button (keeps gr.Request injection working)."""

    def handler(state, request: gr.Request = None):
        return method(column, state, request)

    return handler
