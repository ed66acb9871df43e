"""The web page: Gradio wiring only, one module per tab. Everything it does goes through the `Playground` (models,
votes, versions, exports); the shared panels are rendered once per change (panel.py).

    page.py             the Page: the playground and the server's policies (vote limits, admin token, who votes)
    status.py           the status line at the top of the page
    text.py             text the page shows: code spans, answer titles and details, chat columns
    wiring.py           queue groups, the refresh period, handlers for one button of many
    theme.py            the theme and the style rules
    chat.py             what Compare and Duel share: streaming answers into the page, checking a vote, sampling
    compare.py          Compare: a conversation with three answers a turn (the turns' handlers)
    compare_votes.py    Compare's verdicts: best / ranking / all bad / good-bad, a better answer, continue from
    compare_layout.py   Compare's components and their events
    duel.py             Duel: two answers, A / B / tie / both bad
    explain.py          Why this answer: the implicit reward per token, under each chat tab and as the `explain` endpoint
    training.py         Training: Train now, rollback, the tab's components
    training_panels.py  what the Training tab's panels show: status, progress, plots, versions table, drift
    stages.py           the Stages view: the two datasets, the stage each trains, the latest ablation
    data.py             Leaderboard and Data: ratings, counts, exports, Hub pushes
    panel.py            the refresh every page runs, computed once per change for all of them
"""

from __future__ import annotations

import logging
import os
import time

import gradio as gr

from ..prompting import load_prompts
from .compare import CompareTab
from .data import DataTab
from .duel import DuelTab
from .explain import explain_endpoint
from .page import Page
from .panel import OUTPUTS, Panel
from .theme import CSS, THEME
from .training import TrainingTab
from .wiring import PANEL, QUEUE_SIZE, REFRESH_SECONDS

__all__ = ["Page", "build_app", "launch"]

log = logging.getLogger(__name__)


def build_app(page: Page) -> gr.Blocks:
    # Gradio summarises its recent events after every event, for a monitoring page this app does not use, and every
    # open page's refresh is an event: summarising rarely is enough (docs/performance.md, the panels of idle pages).
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
    prompts = load_prompts()
    page.categories = {p["prompt"]: p["category"] for p in prompts}
    panel = Panel(page)
    compare, duel, training, data = CompareTab(page), DuelTab(page), TrainingTab(page), DataTab(page, panel)
    refreshed = {}

    with gr.Blocks(title="Alignment Playground") as demo:
        gr.Markdown(
            "# Alignment Playground\nOne conversation, three models: **base** (pretrained only), **SFT** "
            "(instruction-tuned) and **preference-tuned** (SFT + a LoRA adapter trained on the feedback "
            "given here: better answers by SFT, votes by DPO, single ratings by KTO). New adapter versions "
            "swap in live."
        )
        gr.Markdown(page.data_notice(), elem_id="data-notice", elem_classes=["pg-meta"], label="how votes are used")
        if page.require_login:
            allow_sign_in_without_hub_login()
            gr.LoginButton(size="sm")
        refreshed["status"] = gr.Markdown(page.status_line(), elem_id="status-line", label="status")
        sent = gr.State({})
        explain_endpoint(page)  # first, so no private event takes its name
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                compare.build([p["prompt"] for p in prompts][:10])
            with gr.Tab("Duel", id="duel"):
                duel.build()
            with gr.Tab("Training", id="training"):
                refreshed |= training.build()
            with gr.Tab("Leaderboard", id="leaderboard"):
                refreshed |= data.build_leaderboard()
            with gr.Tab("Data", id="data"):
                refreshed |= data.build_data()

        outputs = [refreshed[name] for name in OUTPUTS] + [sent]
        timer = gr.Timer(REFRESH_SECONDS)
        timer.tick(panel.refresh, [sent], outputs, api_name="panel", show_progress="hidden", **PANEL)
        demo.load(panel.refresh, [sent], outputs, api_visibility="private", show_progress="hidden", **PANEL)
    demo.panel = panel  # for tests and benchmarks: how often the panels were rendered
    return demo


LOCAL_USER = "local-user"  # who signs in off a Space when this machine has no Hub login to mock with


def allow_sign_in_without_hub_login() -> None:
    """Off a Space, Gradio mocks "Sign in with Hugging Face" with this machine's own Hub login, which it looks up
    (whoami) when the server starts: logged out or offline, that raises and the server never starts. Then a local
    placeholder user signs in instead, so `--require-login` can be tried anywhere. On a Space (Gradio's real OAuth
    routes) nothing changes."""
    from gradio import oauth

    lookup = oauth._get_mocked_oauth_info
    if getattr(lookup, "falls_back", False):
        return

    def mocked_or_placeholder() -> dict:
        try:
            return lookup()
        except Exception as error:  # no token, offline, not a user account
            log.warning("Local sign-in uses the placeholder user %r: %s", LOCAL_USER, error)
            now = int(time.time())
            return {
                "access_token": "local-placeholder",
                "token_type": "bearer",
                "expires_in": 8 * 3600,
                "scope": "openid profile",
                "expires_at": now + 8 * 3600,
                "userinfo": {
                    "sub": "0",
                    "name": "Local user",
                    "preferred_username": LOCAL_USER,
                    "profile": "",
                    "picture": "",
                },
            }

    mocked_or_placeholder.falls_back = True
    oauth._get_mocked_oauth_info = mocked_or_placeholder


def launch(demo: gr.Blocks, host: str, port: int, **kwargs) -> None:
    """Queue and start the server without blocking (the caller decides how to wait and how to stop)."""
    demo.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE)
    demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=True, theme=THEME, css=CSS, show_error=True, **kwargs
    )
