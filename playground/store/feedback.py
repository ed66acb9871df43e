"""What a round may train on: the three kinds of feedback the votes make, which of them wait for a round, which a
round took, and their exports in trl's formats.

- pairs (Dataset 2, DPO): rows written with each vote (`votes.pairs_of`); `round_id` is the first finished round
  that trained on one;
- demonstrations (Dataset 1, SFT): people's better answers; ratings (KTO): single answers judged 👍 / 👎. Both are
  views over the votes (schema migration 7), and the rounds that trained on them are in `round_demonstrations` /
  `round_ratings`; one is pending until such a round is done.

A round takes the oldest pending feedback first, vote by vote, and at most `per_voter` pieces of any one voter's
(all kinds together, so one voter alone never fills a round: `_ELIGIBLE`). A demonstration is keyed by its answer
id, a rating by (vote id, answer id), a pair by its id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from .. import votes as rules
from .database import from_row

KINDS = rules.FEEDBACK_KINDS

_TRAINED_DEMONSTRATION = (
    "EXISTS (SELECT 1 FROM round_demonstrations rd JOIN rounds r ON r.id = rd.round_id "
    "WHERE r.status = 'done' AND rd.answer_id = d.id)"
)
_TRAINED_RATING = (
    "EXISTS (SELECT 1 FROM round_ratings rr JOIN rounds r ON r.id = rr.round_id "
    "WHERE r.status = 'done' AND rr.vote_id = g.vote_id AND rr.answer_id = g.answer_id)"
)

# Every pending piece of feedback: (kind, item, answer, vote_id, who). `who` is the voter, or the session of a vote
# without one (from before voters were recorded, or the command line).
_PENDING = f"""
    SELECT 'pairs' AS kind, p.id AS item, 0 AS answer, p.vote_id, coalesce(v.voter, 'session:' || v.session_id) AS who
    FROM pairs p JOIN votes v ON v.id = p.vote_id WHERE p.round_id IS NULL
    UNION ALL
    SELECT 'demonstrations', d.id, d.id, d.vote_id, coalesce(d.voter, 'session:' || d.session_id)
    FROM demonstrations d WHERE NOT {_TRAINED_DEMONSTRATION}
    UNION ALL
    SELECT 'ratings', g.vote_id, g.answer_id, g.vote_id, coalesce(g.voter, 'session:' || g.session_id)
    FROM ratings g WHERE NOT {_TRAINED_RATING}
"""

# The pending feedback of the kinds asked for (first parameter: a JSON list) that a round may take, oldest vote
# first: with a cap (second parameter, twice; 0 = none), each voter's oldest `cap` pieces; at most a limit (the
# last parameter; -1 = none).
_ELIGIBLE = f"""
    SELECT kind, item, answer FROM (
        SELECT f.*, row_number() OVER (PARTITION BY who ORDER BY vote_id, kind, item, answer) AS nth
        FROM ({_PENDING}) f WHERE kind IN (SELECT value FROM json_each(?)))
    WHERE ? <= 0 OR nth <= ?
    ORDER BY vote_id, kind, item, answer
    LIMIT ?
"""

_PAIR_SELECT = """
    SELECT p.id, p.vote_id, v.kind AS vote_kind, v.session_id, v.voter, p.comparison_id, p.round_id,
           p.created_at, pr.text AS prompt_text, pr.category, cm.history,
           p.chosen_answer_id, c.text AS chosen_text, c.arm AS chosen_arm,
           c.adapter_version AS chosen_adapter_version, c.finish_reason AS chosen_finish_reason,
           p.rejected_answer_id, r.text AS rejected_text, r.arm AS rejected_arm,
           r.adapter_version AS rejected_adapter_version, r.finish_reason AS rejected_finish_reason
    FROM pairs p
    JOIN votes v ON v.id = p.vote_id
    JOIN comparisons cm ON cm.id = p.comparison_id
    JOIN prompts pr ON pr.id = cm.prompt_id
    JOIN answers c ON c.id = p.chosen_answer_id
    JOIN answers r ON r.id = p.rejected_answer_id
"""

_DEMONSTRATION_SELECT = f"""
    SELECT d.id, d.vote_id, d.comparison_id, d.session_id, d.voter, d.created_at, pr.text AS prompt_text,
           pr.category, cm.history, a.text, {_TRAINED_DEMONSTRATION} AS trained
    FROM demonstrations d
    JOIN answers a ON a.id = d.id
    JOIN comparisons cm ON cm.id = d.comparison_id
    JOIN prompts pr ON pr.id = cm.prompt_id
"""

_RATING_SELECT = f"""
    SELECT g.vote_id, g.answer_id, g.label, g.comparison_id, g.session_id, g.voter, g.created_at,
           pr.text AS prompt_text, pr.category, cm.history, a.text, a.arm, a.adapter_version, a.finish_reason,
           {_TRAINED_RATING} AS trained
    FROM ratings g
    JOIN answers a ON a.id = g.answer_id
    JOIN comparisons cm ON cm.id = g.comparison_id
    JOIN prompts pr ON pr.id = cm.prompt_id
"""


class Feedback:
    """Pairs, demonstrations and ratings: pending, trained, exported (a part of `Store`)."""

    # -- what waits for a round ----------------------------------------------------------------------

    def pending_feedback(
        self, kinds: Iterable[str] = KINDS, limit: int | None = None, per_voter: int = 0
    ) -> dict[str, list[dict]]:
        """{kind: rows} of the pending feedback a round may take now (see `_ELIGIBLE`), each kind oldest first."""
        kinds = _checked(kinds)
        with self.read() as conn:
            keys = conn.execute(
                _ELIGIBLE, (json.dumps(kinds), per_voter, per_voter, -1 if limit is None else limit)
            ).fetchall()
        wanted = {kind: [(item, answer) for k, item, answer in keys if k == kind] for kind in kinds}
        return {kind: self._rows_of(kind, wanted[kind]) for kind in kinds}

    def pending_counts(self, kinds: Iterable[str] = KINDS, per_voter: int = 0) -> dict[str, int]:
        """{kind: how many a round could take now}: what decides whether enough wait to start one."""
        kinds = _checked(kinds)
        with self.read() as conn:
            found = dict(
                conn.execute(
                    f"SELECT kind, count(*) FROM ({_ELIGIBLE}) GROUP BY kind",
                    (json.dumps(kinds), per_voter, per_voter, -1),
                ).fetchall()
            )
        return {kind: found.get(kind, 0) for kind in kinds}

    def pending_pairs(self, limit: int | None = None, per_voter: int = 0) -> list[dict]:
        """Pairs no finished round has trained on yet, oldest first; with `per_voter`, only each voter's oldest
        `per_voter` of them."""
        return self.pending_feedback(("pairs",), limit, per_voter)["pairs"]

    def trained_feedback(self, kind: str) -> list[dict]:
        """The rows of `kind` that a finished round trained on (what a round replays), oldest first."""
        (kind,) = _checked([kind])
        where = {
            "pairs": " WHERE p.round_id IS NOT NULL ORDER BY p.id",
            "demonstrations": f" WHERE {_TRAINED_DEMONSTRATION} ORDER BY d.id",
            "ratings": f" WHERE {_TRAINED_RATING} ORDER BY g.vote_id, g.answer_id",
        }[kind]
        with self.read() as conn:
            return [from_row(r) for r in conn.execute(_select(kind) + where)]

    def _rows_of(self, kind: str, keys: list[tuple[int, int]]) -> list[dict]:
        if kind == "pairs":
            return self.pairs(item for item, _ in keys)
        if kind == "demonstrations":
            return self.demonstrations(item for item, _ in keys)
        return self.ratings(keys)

    # -- the rows ------------------------------------------------------------------------------------

    def pairs(self, ids: Iterable[int] | None = None) -> list[dict]:
        """Pairs (all, or those with these ids) by id: prompt/chosen/rejected texts, arms, versions."""
        return self._select_rows("pairs", " WHERE p.id IN (SELECT value FROM json_each(?))", ids, " ORDER BY p.id")

    def demonstrations(self, ids: Iterable[int] | None = None) -> list[dict]:
        """Demonstrations (all, or those with these answer ids): the turn's history, prompt and the person's answer,
        and whether a finished round trained on it."""
        return self._select_rows(
            "demonstrations", " WHERE d.id IN (SELECT value FROM json_each(?))", ids, " ORDER BY d.id"
        )

    def ratings(self, keys: Iterable[tuple[int, int]] | None = None) -> list[dict]:
        """Ratings (all, or those with these (vote id, answer id) keys): the rated answer with its turn, `label`
        1 for 👍 and 0 for 👎, and whether a finished round trained on it."""
        where = (
            " WHERE EXISTS (SELECT 1 FROM json_each(?) k WHERE json_extract(k.value, '$[0]') = g.vote_id "
            "AND json_extract(k.value, '$[1]') = g.answer_id)"
        )
        return self._select_rows(
            "ratings", where, None if keys is None else [list(k) for k in keys], " ORDER BY g.vote_id, g.answer_id"
        )

    def _select_rows(self, kind: str, where: str, keys, order: str) -> list[dict]:
        with self.read() as conn:
            if keys is None:
                rows = conn.execute(_select(kind) + order)
            else:
                rows = conn.execute(_select(kind) + where + order, (json.dumps(list(keys)),))
            return [from_row(r) for r in rows]

    def feedback_totals(self) -> dict[str, dict[str, int]]:
        """{kind: {"total", "pending"}} over every vote (pending: no finished round trained on it, whatever caps)."""
        with self.read() as conn:
            pending = dict(conn.execute(f"SELECT kind, count(*) FROM ({_PENDING}) GROUP BY kind").fetchall())
            total = {
                "pairs": conn.execute("SELECT count(*) FROM pairs").fetchone()[0],
                "demonstrations": conn.execute("SELECT count(*) FROM demonstrations").fetchone()[0],
                "ratings": conn.execute("SELECT count(*) FROM ratings").fetchone()[0],
            }
        return {kind: {"total": total[kind], "pending": pending.get(kind, 0)} for kind in KINDS}

    # -- exports in trl's formats --------------------------------------------------------------------

    def export_pairs(self) -> Iterator[dict]:
        """Every pair in TRL's conversational preference format (keys prompt/chosen/rejected only)."""
        for pair in self._batches(_PAIR_SELECT + " WHERE p.id > ? ORDER BY p.id LIMIT ?"):
            yield rules.to_trl(pair)

    def export_demonstrations(self) -> Iterator[dict]:
        """Every demonstration as an SFT example in TRL's conversational format: {"messages": the turn's history,
        its prompt and the person's answer}."""
        for row in self._batches(_DEMONSTRATION_SELECT + " WHERE d.id > ? ORDER BY d.id LIMIT ?"):
            yield rules.demonstration_messages(row)

    def export_ratings(self) -> Iterator[dict]:
        """Every rating in TRL's unpaired preference format: {"prompt", "completion", "label"} (label true: 👍)."""
        for row in self._batches(
            "SELECT * FROM (SELECT row_number() OVER (ORDER BY vote_id, answer_id) AS id, * "
            f"FROM ({_RATING_SELECT})) WHERE id > ? ORDER BY id LIMIT ?"
        ):
            yield rules.rating_to_trl(row)


def _select(kind: str) -> str:
    return {"pairs": _PAIR_SELECT, "demonstrations": _DEMONSTRATION_SELECT, "ratings": _RATING_SELECT}[kind]


def _checked(kinds: Iterable[str]) -> list[str]:
    kinds = list(kinds)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"Unknown feedback kind(s) {sorted(unknown)}; the kinds are {', '.join(KINDS)}.")
    return kinds
