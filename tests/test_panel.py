"""The panels every open page refreshes: computed once per change and shared, skipped where a page has them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import gradio as gr
from helpers import add_compare

from playground.core import Playground
from playground.settings import ModelSettings
from playground.ui import Page, build_app
from playground.ui.panel import OUTPUTS

SKIP = gr.skip()


def skipped(value) -> bool:
    return isinstance(value, dict) and value == SKIP


def a_page(tmp_path) -> tuple[Page, object]:
    page = Page(Playground(ModelSettings(preset="embedded", data_dir=str(tmp_path))))
    return page, build_app(page).panel


def test_many_pages_share_one_computation_per_change(tmp_path):
    page, panel = a_page(tmp_path)
    store, dashboard = page.playground.store, page.playground.dashboard
    cid, ids = add_compare(store, "Q?", {"base": "b", "sft": "s", "pref": "p"})
    pages = [{} for _ in range(20)]

    def tick(i):
        *values, pages[i] = panel.refresh(pages[i])
        return values

    with ThreadPoolExecutor(8) as pool:
        first = list(pool.map(tick, range(20)))
    assert (dashboard.computed, panel.rendered) == (1, 1), "20 pages, one computation"
    assert not any(skipped(v) for v in first[0]), "a new page gets every panel"
    again = [tick(i) for i in range(20)]
    assert (dashboard.computed, panel.rendered) == (1, 1)
    assert all(skipped(v) for values in again for v in values), "nothing changed: all skipped"

    store.vote_best("s", cid, [ids["sft"]])  # a vote changes the counts, the ratings, the pending pairs
    after = [tick(i) for i in range(20)]
    assert (dashboard.computed, panel.rendered) == (2, 2)
    names = OUTPUTS
    changed = {name for name, value in zip(names, after[0]) if not skipped(value)}
    assert changed == {"training", "stages", "versions", "leaderboard", "leaderboard_plot", "counts", "stats"}
    assert "sft" in after[0][names.index("leaderboard_plot")] and "<svg" in after[0][names.index("leaderboard_plot")]
    board = after[0][names.index("leaderboard")]
    assert [row[1] for row in board] == ["sft", "base"], "the SFT answer won: it leads"


def test_a_change_of_the_servers_own_state_renders_again(tmp_path):
    page, panel = a_page(tmp_path)
    panel.values()
    page.playground.serving.error = "out of memory"  # not in the store: the panels still follow it
    values, _ = panel.values()
    assert panel.rendered == 2 and "out of memory" in values["status"]
    assert page.playground.dashboard.computed == 1, "the store did not change: its figures are reused"
