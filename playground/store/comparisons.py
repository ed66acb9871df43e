"""What people asked and what the arms answered: prompts, comparisons (one turn of a chat each) and their answers,
and the conversations the turns make.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable

from ..arms import ARMS
from .database import from_row, to_json
from .errors import StoreError

MODES = ("compare", "duel")
HUMAN = "human"  # the arm of an answer a person wrote (a correction)

ANSWER_FIELDS = (
    "text",
    "model",
    "adapter_version",
    "settings",
    "seed",
    "prompt_tokens",
    "new_tokens",
    "seconds",
    "ttft",
    "finish_reason",
)


def insert_answer(conn: sqlite3.Connection, comparison_id: int, slot: int, answer: dict) -> int:
    """Answer `answer` (a dict with `arm` and ANSWER_FIELDS) at `slot` of the comparison; its id."""
    values = {key: answer.get(key) for key in ANSWER_FIELDS}
    return conn.execute(
        "INSERT INTO answers (comparison_id, arm, slot, model, adapter_version, settings, seed, text, "
        "prompt_tokens, new_tokens, seconds, ttft, finish_reason, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            comparison_id,
            answer["arm"],
            slot,
            values["model"],
            values["adapter_version"] or 0,
            to_json(values["settings"] or {}),
            values["seed"],
            values["text"],
            values["prompt_tokens"],
            values["new_tokens"],
            values["seconds"],
            values["ttft"],
            values["finish_reason"],
            time.time(),
        ),
    ).lastrowid


def answers_of(conn: sqlite3.Connection, comparison_id: int) -> list[dict]:
    """Every answer of the comparison, by slot."""
    rows = conn.execute("SELECT * FROM answers WHERE comparison_id = ? ORDER BY slot", (comparison_id,))
    return [from_row(r) for r in rows]


class Comparisons:
    """Prompts, comparisons, answers and conversations (a part of `Store`)."""

    # -- prompts, comparisons, answers ---------------------------------------------------------------

    def add_comparison(
        self,
        prompt: str,
        session_id: str,
        mode: str = "compare",
        category: str | None = None,
        answers: Iterable[dict] = (),
        *,
        history: list[dict] | None = None,
        chat_id: str | None = None,
        parent_answer_id: int | None = None,
    ) -> tuple[int, list[int]]:
        """A comparison (one turn of a chat) with its answers, in one transaction: (comparison id, answer ids in
        order). Each answer is a dict with `arm` and ANSWER_FIELDS; its slot is its position. `history`: the messages
        before `prompt` that every arm answered; `parent_answer_id`: the previous turn's answer it continues from;
        `chat_id` groups the turns of one conversation (its turn number is counted here)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        answers = list(answers)
        for answer in answers:
            if answer["arm"] not in ARMS:
                raise ValueError(f"arm must be one of {ARMS}, not {answer['arm']!r}")
        history = list(history or [])
        now = time.time()
        with self.write() as conn:
            if (
                parent_answer_id is not None
                and conn.execute("SELECT 1 FROM answers WHERE id = ?", (parent_answer_id,)).fetchone() is None
            ):
                raise StoreError(f"Answer {parent_answer_id} (the turn this one continues) does not exist.")
            turn = 1 + len(history) // 2
            prompt_id = conn.execute(
                "INSERT INTO prompts (text, category, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (text) DO UPDATE SET category = coalesce(prompts.category, excluded.category) "
                "RETURNING id",
                (prompt, category, now),
            ).fetchone()[0]
            comparison_id = conn.execute(
                "INSERT INTO comparisons (prompt_id, session_id, mode, created_at, chat_id, turn, history, "
                "parent_answer_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (prompt_id, session_id, mode, now, chat_id, turn, json.dumps(history), parent_answer_id),
            ).lastrowid
            ids = [insert_answer(conn, comparison_id, slot, answer) for slot, answer in enumerate(answers)]
            return comparison_id, ids

    def comparison(self, comparison_id: int) -> dict | None:
        """The comparison with its prompt text, category and answers (by slot)."""
        with self.read() as conn:
            c = from_row(
                conn.execute(
                    "SELECT cm.id, cm.prompt_id, p.text AS prompt, p.category, cm.session_id, cm.mode, cm.created_at, "
                    "cm.chat_id, cm.turn, cm.history, cm.parent_answer_id "
                    "FROM comparisons cm JOIN prompts p ON p.id = cm.prompt_id WHERE cm.id = ?",
                    (comparison_id,),
                ).fetchone()
            )
            if c is not None:
                c["answers"] = answers_of(conn, comparison_id)
            return c

    def answer(self, answer_id: int) -> dict | None:
        with self.read() as conn:
            return from_row(conn.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone())

    # -- conversations -------------------------------------------------------------------------------

    def continuation(self, comparison_id: int, session_id: str, chosen_answer_id: int | None = None) -> dict:
        """The answer of this turn the conversation goes on with, the same for every arm: the person's correction,
        else the answer their vote put first (best, or a duel's winner), else the one they chose to continue from,
        else the preference-tuned (or the duel's first) answer. Raises StoreError for a foreign `chosen_answer_id`."""
        with self.read() as conn:
            answers = answers_of(conn, comparison_id)
            if not answers:
                raise StoreError(f"Comparison {comparison_id} does not exist or has no answers.")
            voted = conn.execute(
                "SELECT v.kind, v.outcome, va.answer_id, va.position FROM votes v "
                "JOIN vote_answers va ON va.vote_id = v.id WHERE v.comparison_id = ? AND v.session_id = ? "
                "AND v.kind IN ('correction', 'best', 'pairwise') "
                "ORDER BY CASE v.kind WHEN 'correction' THEN 0 ELSE 1 END, v.id DESC, va.position",
                (comparison_id, session_id),
            ).fetchall()
        by_id = {a["id"]: a for a in answers}
        for kind, outcome, answer_id, position in voted:
            if kind in ("correction", "best") and position == 0:
                return by_id[answer_id]
            if kind == "pairwise" and outcome in ("a", "b") and position == ("a", "b").index(outcome):
                return by_id[answer_id]
        if chosen_answer_id is not None:
            if chosen_answer_id not in by_id:
                raise StoreError(f"Answer {chosen_answer_id} is not an answer of comparison {comparison_id}.")
            return by_id[chosen_answer_id]
        models = [a for a in answers if a["arm"] != HUMAN]
        return next((a for a in models if a["arm"] == "pref"), models[0])

    def next_history(self, comparison_id: int, continued: dict) -> list[dict]:
        """The messages every arm answers next: this turn's history, its prompt and the answer it continues with."""
        c = self.comparison(comparison_id)
        return list(c["history"]) + [
            {"role": "user", "content": c["prompt"]},
            {"role": "assistant", "content": continued["text"]},
        ]

    def chat(self, chat_id: str) -> list[dict]:
        """The turns of a conversation, oldest first (comparison rows with prompt, history and parent answer)."""
        with self.read() as conn:
            ids = [
                r[0] for r in conn.execute("SELECT id FROM comparisons WHERE chat_id = ? ORDER BY turn, id", (chat_id,))
            ]
        return [self.comparison(i) for i in ids]

    def conversation(self, comparison_id: int) -> list[dict]:
        """The turns this comparison continues, oldest first, ending with it: each turn's parent answer leads to the
        turn before (a regenerated turn is not on the path; the turn continued from is)."""
        turns, seen = [], set()
        current = self.comparison(comparison_id)
        while current is not None and current["id"] not in seen:
            seen.add(current["id"])
            turns.append(current)
            parent = self.answer(current["parent_answer_id"]) if current["parent_answer_id"] else None
            current = self.comparison(parent["comparison_id"]) if parent else None
        return turns[::-1]
