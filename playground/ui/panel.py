"""The panels every open page refreshes every REFRESH_SECONDS (status line, training, plots, versions, leaderboard,
counts, raw figures): rendered once per change and shared by all pages.

A change is a change of the store (`Store.changes()`) or of the server's own state (models ready, the version the
engine serves, the trainer process). Each page remembers a digest of what it last received and gets `gr.skip()`
for outputs that did not change, so plots and tables are not redrawn at every refresh.
"""

from __future__ import annotations

import hashlib
import json
import threading

import gradio as gr
import pandas as pd

from .. import leaderboard
from ..dashboard import STATS_VERSION_FIELDS
from ..training import eligible_counts, min_pairs_in_force
from .data import counts_table
from .page import Page
from .stages import stages_markdown
from .training_panels import (
    DRIFT_PLOTS,
    agreement_frame,
    drift_frame,
    overoptimization_frame,
    plot_frame,
    progress_html,
    steps_frame,
    training_status,
    versions_table,
)

OUTPUTS = (
    "status",
    "training",
    "stages",
    "progress",
    "loss",
    "margin",
    "accuracy",
    "rl_reward",
    "rl_kl",
    "versions",
    "agreement",
    "surrogate",
    "truth",
    *(p[0] for p in DRIFT_PLOTS),
    "leaderboard",
    "leaderboard_plot",
    "counts",
    "stats",
)


class Panel:
    def __init__(self, page: Page):
        self.page = page
        self.rendered = 0  # how many times the panels were rendered (tests and the panel benchmark read it)
        self._cache: tuple[tuple, dict, dict] | None = None
        self._lock = threading.Lock()

    def _live(self) -> tuple:
        pg = self.page.playground
        return (
            pg.ready,
            pg.error,
            pg.engine.adapter_version if pg.engine else None,
            pg.trainer_alive(),
            pg.trainer.pid,
            pg.trainer.wanted,
        )

    def values(self) -> tuple[dict, dict]:
        """(values, digests) of every output, as of now."""
        facts = self.page.playground.dashboard.facts()
        key = (facts["changes"], id(facts), self._live())
        cache = self._cache
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        with self._lock:
            cache = self._cache
            if cache is not None and cache[0] == key:
                return cache[1], cache[2]
            values = self._render(facts)
            digests = {name: _digest(value) for name, value in values.items()}
            self._cache = (key, values, digests)
            self.rendered += 1
            return values, digests

    def stats(self, facts: dict | None = None) -> dict:
        """The raw figures (`/stats`): counts, rounds, versions, serving and engine versions, the trainer."""
        pg = self.page.playground
        facts = facts or pg.dashboard.facts()
        eligible = eligible_counts(pg.store, pg.round_settings)
        return {
            "ready": pg.ready,
            "status": self.page.status_line(),
            "error": pg.error,
            "data_set": pg.data_set.name,
            "serving_version": facts["serving_version"],
            "engine_version": pg.engine.adapter_version if pg.engine else None,
            "trainer_alive": pg.trainer_alive(),
            "trainer_pid": pg.trainer.pid,
            "durable_copy": pg.durable_status(),
            "trainer": facts["trainer"],
            "min_pairs": min_pairs_in_force(facts["trainer"], pg.round_settings.min_pairs),
            "counts": facts["counts"],
            # The pending feedback a round could take under the per-voter cap (what min_pairs is compared with).
            "eligible": eligible,
            "pairs_eligible": eligible["pairs"],
            "feedback": facts["feedback"],
            "running_round": facts["running_round"],
            "sft_drift": facts["sft_drift"],
            "rounds": facts["rounds"],
            "versions": [{k: v[k] for k in STATS_VERSION_FIELDS} for v in facts["versions"]],
            # Each reward model's agreement with the votes it judged before any round trained on them.
            "reward_agreement": {
                f"v{v['version']}": v["reward_model"] for v in facts["versions"] if v.get("reward_model")
            },
        }

    def _render(self, facts: dict) -> dict:
        pg = self.page.playground
        stats = self.stats(facts)
        steps = steps_frame(facts["steps"], facts["rounds"])
        drift = drift_frame(facts)
        overoptimization = overoptimization_frame(facts)
        return {
            "status": stats["status"],
            "training": training_status(
                facts, stats["engine_version"], stats["trainer_alive"], stats["min_pairs"], stats["eligible"]
            ),
            "stages": stages_markdown(facts, pg.round_settings),
            "progress": progress_html(facts["running_round"]),
            "loss": plot_frame(steps, "step", "stage", "loss"),
            "margin": plot_frame(steps, "step", "round", "reward_margin"),
            "accuracy": plot_frame(steps, "step", "round", "reward_accuracy"),
            "rl_reward": plot_frame(steps, "step", "round", "rl_reward"),
            "rl_kl": plot_frame(steps, "step", "round", "rl_kl"),
            "versions": versions_table(facts),
            "agreement": agreement_frame(facts),
            "surrogate": plot_frame(overoptimization, "KL to SFT", "reward model score"),
            "truth": plot_frame(overoptimization, "KL to SFT", "true win rate"),
            **{name: plot_frame(drift, "version", column) for name, column, _ in DRIFT_PLOTS},
            "leaderboard": leaderboard.table(facts["standings"], facts["mean_rewards"]["players"]),
            "leaderboard_plot": leaderboard.interval_plot(facts["standings"]),
            "counts": counts_table(facts["counts"], facts["feedback"]),
            "stats": stats,
        }

    def refresh(self, sent):
        """The timer's handler: every output, or gr.skip() where this page already has it."""
        values, digests = self.values()
        sent = dict(sent or {})
        out = []
        for name in OUTPUTS:
            out.append(gr.skip() if sent.get(name) == digests[name] else values[name])
            sent[name] = digests[name]
        return *out, sent


def _digest(value) -> str:
    if isinstance(value, pd.DataFrame):
        value = value.to_json()
    return hashlib.sha1(json.dumps(value, default=str, sort_keys=True).encode()).hexdigest()
