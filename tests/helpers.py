"""Test helpers that fill a store with realistic votes without running models."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from playground.generation import final
from playground.settings import RoundSettings
from playground.store import Store

# A round that visibly moves a tiny model in seconds: a large learning rate, one short epoch. Tests change what
# they need with `dataclasses.replace`. Plain DPO, ratings at the full rate and the old replay: at this learning rate
# RPO's NLL term makes a random tiny model end every answer at once; RPO and the app's defaults are tested in
# test_unfinished.py and on the embedded models by `bench votes`.
TINY_ROUND = RoundSettings(
    min_pairs=4,
    epochs=1,
    batch_size=4,
    grad_accumulation=1,
    learning_rate=5e-2,
    max_length=64,
    train_threads=1,
    rpo_weight=0.0,
    rating_weight=1.0,
    replay_pairs=32,
)


def tiny_round(**changes) -> RoundSettings:
    return replace(TINY_ROUND, **changes)


# The store's data tables (the change log and meta aside), named here so a test notices one added or dropped.
DATA_TABLES = (
    "prompts",
    "comparisons",
    "answers",
    "votes",
    "vote_answers",
    "pairs",
    "rounds",
    "round_pairs",
    "round_steps",
    "adapter_versions",
    "answer_rewards",
    "reward_judgments",
)


def add_compare(store: Store, prompt: str, texts: dict[str, str], session="s1", version=0) -> tuple[int, dict]:
    answers = [
        {
            "arm": arm,
            "text": text,
            "model": f"tiny-{arm}",
            "adapter_version": version if arm == "pref" else 0,
            "settings": {"temperature": 0.7},
            "seed": 1,
            "prompt_tokens": 5,
            "new_tokens": len(text.split()),
            "seconds": 0.1,
        }
        for arm, text in texts.items()
    ]
    comparison, ids = store.add_comparison(prompt, session, answers=answers)
    return comparison, dict(zip(texts, ids))


def add_short_vs_long_votes(store: Store, n: int, session="sim") -> int:
    """n pairwise votes preferring a short answer over a long one; returns the pairs created."""
    created = 0
    for i in range(n):
        prompt = f"Question number {i}: tell me about topic {i}."
        comparison, (a, b) = store.add_comparison(
            prompt,
            session,
            mode="duel",
            answers=[
                {"arm": "pref", "text": f"Short answer {i}.", "model": "tiny", "seed": i, "new_tokens": 3},
                {
                    "arm": "pref",
                    "text": f"A much longer answer about topic {i}, " * 3,
                    "model": "tiny",
                    "seed": i + 1,
                    "new_tokens": 30,
                },
            ],
        )
        created += store.vote_pairwise(session, comparison, a, b, "a").pairs_created
    return created


class AnswersInFlight:
    """Answers being written (first token out, not finished), so a test can make a hot swap land mid-answer and
    check that those answers keep the adapter version they started with."""

    def __init__(self):
        import itertools
        import threading

        self._lock, self._ids = threading.Lock(), itertools.count()
        self._streaming: dict[int, int] = {}  # id -> the version the answer started with

    def answer(self, engine, prompt: str, sampling, arms=("sft", "pref")):
        """Stream one answer to the end: (answers, the preference arm's version when its first token was out)."""
        stream = engine.stream(prompt, sampling, arms=arms)
        answers = next(stream)  # the first token is out: this answer's version is fixed now
        with self._lock:
            me = next(self._ids)
            self._streaming[me] = answers["pref"].adapter_version
        answers = final(stream, answers)
        with self._lock:
            started_with = self._streaming.pop(me)
        return answers, started_with

    def wait(self, timeout: float = 60) -> dict[int, int]:
        """The answers being written once there is at least one (empty after `timeout`)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                now = dict(self._streaming)
            if now or time.monotonic() > deadline:
                return now
            time.sleep(0.001)


def pragmas(store: Store) -> dict:
    """The settings a new connection of the store runs with."""
    with contextlib.closing(store.connect()) as conn:
        names = ("journal_mode", "foreign_keys", "synchronous", "busy_timeout", "user_version")
        return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}


def newest_ready(store: Store) -> int:
    """The newest version in state ready (0: none)."""
    return max((v["version"] for v in store.versions() if v["state"] == "ready"), default=0)


ROOT = Path(__file__).resolve().parent.parent


def simulate_json(tiny_models, data_dir: Path, *args: str) -> dict:
    """`simulate ... --json` on the tiny models, in its own process, one training thread: the report."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    models = ["--base", str(tiny_models["base"]), "--sft", str(tiny_models["sft"]), "--data-dir", str(data_dir)]
    tiny = ["--epochs", "1", "--train-threads", "1", "--learning-rate", "5e-2"]
    tiny += ["--rpo-weight", "0", "--rating-weight", "1", "--replay-pairs", "32"]  # as TINY_ROUND says why
    result = subprocess.run(
        [sys.executable, "-m", "playground", "-q", "simulate", *args, *tiny, *models, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)
