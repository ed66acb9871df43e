"""What people gave: votes, corrections and the preference pairs they make (the other kinds of feedback,
demonstrations and ratings, are read from the votes: feedback.py). What they voted on is comparisons.py.

A vote is checked, written with its pairs (`votes.pairs_of`) in one transaction, or refused with a message and
nothing written.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .. import votes as rules
from .comparisons import HUMAN, answers_of, insert_answer
from .database import from_row
from .errors import StoreError

_EXPORT_BATCH = 500
MAX_CORRECTION_CHARS = 4000


class VoteError(StoreError):
    """A vote that was refused; nothing was written."""


@dataclass(frozen=True)
class VoteReceipt:
    vote_id: int
    kind: str
    pairs_created: int
    message: str


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class Records:
    """Votes, corrections and pairs (a part of `Store`)."""

    def has_voted(self, session_id: str, comparison_id: int) -> bool:
        """Whether this session gave any verdict or rating on the comparison (blind names may show after it)."""
        with self.read() as conn:
            return (
                conn.execute(
                    "SELECT 1 FROM votes WHERE session_id = ? AND comparison_id = ? LIMIT 1",
                    (session_id, comparison_id),
                ).fetchone()
                is not None
            )

    # -- corrections -----------------------------------------------------------------------------------

    def add_correction(
        self, session_id: str, comparison_id: int, text: str, *, voter: str | None = None
    ) -> VoteReceipt:
        """A person's better answer to a turn: stored as an answer (arm 'human'), the chosen side of a pair against
        each model answer of the turn (a vote of kind 'correction'), and what the conversation continues with."""
        text = (text or "").strip()
        if not text:
            raise VoteError("The better answer is empty: write the answer you would have wanted.")
        if len(text) > MAX_CORRECTION_CHARS:
            raise VoteError(f"The better answer has {len(text):,} characters; the limit is {MAX_CORRECTION_CHARS:,}.")
        with self.write() as conn:
            answers = self._vote_target(conn, session_id, comparison_id)
            self._check_not_voted(conn, "correction", session_id, comparison_id)
            slot = conn.execute(
                "SELECT coalesce(max(slot), -1) + 1 FROM answers WHERE comparison_id = ?", (comparison_id,)
            ).fetchone()[0]
            answer_id = insert_answer(conn, comparison_id, slot, {"arm": HUMAN, "text": text, "model": HUMAN})
            human = from_row(conn.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone())
            return self._record(conn, "correction", session_id, comparison_id, None, [human], answers + [human], voter)

    # -- votes ---------------------------------------------------------------------------------------

    def vote_best(
        self, session_id: str, comparison_id: int, ranking: list[int], *, voter: str | None = None
    ) -> VoteReceipt:
        """`ranking`: answer ids best first, either just the winner or every answer of the comparison.
        `voter` (every vote method): who cast it, 'hf:<user>' or 'ip:<keyed hash>' (`voters.py`); None when unknown
        (the command line), and then its session stands for the voter."""
        ranking = list(ranking)
        with self.write() as conn:
            answers = self._vote_target(conn, session_id, comparison_id)
            self._check_members(conn, comparison_id, answers, ranking)
            problem = rules.ranking_problem(ranking, [a["id"] for a in answers])
            if problem:
                raise VoteError(problem)
            self._check_not_voted(conn, "best", session_id, comparison_id)
            by_id = {a["id"]: a for a in answers}
            return self._record(
                conn, "best", session_id, comparison_id, None, [by_id[i] for i in ranking], answers, voter
            )

    def vote_all_bad(self, session_id: str, comparison_id: int, *, voter: str | None = None) -> VoteReceipt:
        with self.write() as conn:
            answers = self._vote_target(conn, session_id, comparison_id)
            self._check_not_voted(conn, "all_bad", session_id, comparison_id)
            return self._record(conn, "all_bad", session_id, comparison_id, None, [], answers, voter)

    def vote_pairwise(
        self,
        session_id: str,
        comparison_id: int,
        answer_a: int,
        answer_b: int,
        outcome: str,
        *,
        voter: str | None = None,
    ) -> VoteReceipt:
        """outcome: 'a' or 'b' (the winner), 'tie' or 'both_bad'."""
        if outcome not in rules.PAIRWISE_OUTCOMES:
            raise VoteError(f"Unknown outcome {outcome!r}; expected one of {', '.join(rules.PAIRWISE_OUTCOMES)}.")
        if answer_a == answer_b:
            raise VoteError("Answer A and answer B must be two different answers.")
        with self.write() as conn:
            answers = self._vote_target(conn, session_id, comparison_id)
            self._check_members(conn, comparison_id, answers, [answer_a, answer_b])
            self._check_not_voted(conn, "pairwise", session_id, comparison_id)
            by_id = {a["id"]: a for a in answers}
            pair = [by_id[answer_a], by_id[answer_b]]
            return self._record(conn, "pairwise", session_id, comparison_id, outcome, pair, answers, voter)

    def vote_thumb(self, session_id: str, answer_id: int, up: bool, *, voter: str | None = None) -> VoteReceipt:
        with self.write() as conn:
            row = conn.execute("SELECT comparison_id FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if row is None:
                raise VoteError(f"Answer {answer_id} does not exist.")
            comparison_id = row[0]
            answers = self._vote_target(conn, session_id, comparison_id)
            already = conn.execute(
                "SELECT 1 FROM votes v JOIN vote_answers va ON va.vote_id = v.id "
                "WHERE v.kind = 'thumb' AND v.session_id = ? AND va.answer_id = ?",
                (session_id, answer_id),
            ).fetchone()
            if already:
                raise VoteError("You already rated this answer.")
            answer = next((a for a in answers if a["id"] == answer_id), None)
            if answer is None:
                raise VoteError("That answer is one a person wrote (a better answer); rate the models' answers.")
            return self._record(
                conn, "thumb", session_id, comparison_id, "up" if up else "down", [answer], answers, voter
            )

    @staticmethod
    def _vote_target(conn: sqlite3.Connection, session_id: str, comparison_id: int) -> list[dict]:
        """The model answers a vote on this comparison is about (a person's correction is not one of them)."""
        if not session_id:
            raise VoteError("A vote needs a session id.")
        if conn.execute("SELECT 1 FROM comparisons WHERE id = ?", (comparison_id,)).fetchone() is None:
            raise VoteError(f"Comparison {comparison_id} does not exist.")
        return [a for a in answers_of(conn, comparison_id) if a["arm"] != HUMAN]

    @staticmethod
    def _check_members(conn: sqlite3.Connection, comparison_id: int, answers: list[dict], ids: Iterable[int]) -> None:
        own = {a["id"] for a in answers}
        for answer_id in ids:
            if answer_id in own:
                continue
            row = conn.execute("SELECT comparison_id FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if row is None:
                raise VoteError(f"Answer {answer_id} does not exist.")
            raise VoteError(f"Answer {answer_id} belongs to comparison {row[0]}, not to comparison {comparison_id}.")

    @staticmethod
    def _check_not_voted(conn: sqlite3.Connection, kind: str, session_id: str, comparison_id: int) -> None:
        # 'best' and 'all_bad' are two answers to one question, so either one closes it.
        kinds = ("best", "all_bad") if kind in ("best", "all_bad") else (kind,)
        row = conn.execute(
            f"SELECT kind FROM votes WHERE session_id = ? AND comparison_id = ? "
            f"AND kind IN ({','.join('?' * len(kinds))})",
            (session_id, comparison_id, *kinds),
        ).fetchone()
        if row is not None:
            what = {
                "best": "picked the best answer",
                "all_bad": "marked every answer bad",
                "pairwise": "voted on this duel",
                "correction": "wrote a better answer",
            }[row[0]]
            raise VoteError(f"You already {what} for this prompt; each session votes once per comparison.")

    @staticmethod
    def _record(
        conn: sqlite3.Connection,
        kind: str,
        session_id: str,
        comparison_id: int,
        outcome: str | None,
        named: list[dict],
        answers: list[dict],
        voter: str | None,
    ) -> VoteReceipt:
        now = time.time()
        vote_id = conn.execute(
            "INSERT INTO votes (kind, session_id, voter, comparison_id, outcome, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, session_id, voter, comparison_id, outcome, now),
        ).lastrowid
        conn.executemany(
            "INSERT INTO vote_answers (vote_id, answer_id, position) VALUES (?, ?, ?)",
            [(vote_id, a["id"], position) for position, a in enumerate(named)],
        )
        pairs = rules.pairs_of(kind, named, outcome, answers)
        conn.executemany(
            "INSERT INTO pairs (vote_id, comparison_id, chosen_answer_id, rejected_answer_id, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(vote_id, comparison_id, chosen, rejected, now) for chosen, rejected in pairs],
        )
        return VoteReceipt(vote_id, kind, len(pairs), _thanks(kind, outcome, len(pairs)))

    # -- the voters' key -----------------------------------------------------------------------------

    def voter_salt(self) -> bytes:
        """The secret key of the voters' address hashes (`voters.address_voter`), created on first use. It stays in
        this file (meta 'voter_salt' is never copied), so the stored hashes cannot be reversed by trying addresses
        without it."""
        salt = getattr(self, "_voter_salt", None)
        if salt is None:
            with self.write() as conn:
                # DO NOTHING: another process may have created it first; theirs is the one to use.
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('voter_salt', ?) ON CONFLICT (key) DO NOTHING",
                    (secrets.token_hex(32),),
                )
                salt = self._voter_salt = bytes.fromhex(self.meta(conn, "voter_salt"))
        return salt

    def _batches(self, sql: str) -> Iterator[dict]:
        """Every row of `sql` (which selects an `id` and ends in `WHERE <id> > ? ORDER BY <id> LIMIT ?`), read in
        batches of one short transaction each, so a long export never pins the WAL."""
        last = 0
        while True:
            with self.read() as conn:
                batch = [from_row(r) for r in conn.execute(sql, (last, _EXPORT_BATCH))]
            if not batch:
                return
            yield from batch
            last = batch[-1]["id"]

    def export_votes(self) -> Iterator[dict]:
        """Every vote, raw: kind, session, voter, outcome, time, prompt and the comparison's answers, each with
        the `position` the vote gave it (None when the vote did not name it, e.g. all_bad)."""
        last = 0
        while True:
            with self.read() as conn:
                votes = [
                    from_row(r)
                    for r in conn.execute(
                        "SELECT v.id AS vote_id, v.kind, v.session_id, v.voter, v.outcome, v.created_at, v.comparison_id, "
                        "cm.mode, cm.chat_id, cm.turn, cm.history, p.text AS prompt, p.category FROM votes v "
                        "JOIN comparisons cm ON cm.id = v.comparison_id JOIN prompts p ON p.id = cm.prompt_id "
                        "WHERE v.id > ? ORDER BY v.id LIMIT ?",
                        (last, _EXPORT_BATCH),
                    )
                ]
                for vote in votes:
                    vote["answers"] = [
                        from_row(r)
                        for r in conn.execute(
                            "SELECT a.id AS answer_id, va.position, a.slot, a.arm, a.model, a.adapter_version, "
                            "a.settings, a.seed, a.text FROM answers a "
                            "LEFT JOIN vote_answers va ON va.answer_id = a.id AND va.vote_id = ? "
                            # a person's correction belongs to the vote that made it, not to the others on the turn
                            "WHERE a.comparison_id = ? AND (a.arm <> 'human' OR va.vote_id IS NOT NULL) "
                            "ORDER BY va.position IS NULL, va.position, a.slot",
                            (vote["vote_id"], vote["comparison_id"]),
                        )
                    ]
            if not votes:
                return
            yield from votes
            last = votes[-1]["vote_id"]


def _thanks(kind: str, outcome: str | None, n_pairs: int) -> str:
    if kind == "correction":
        return (
            f"Thanks! Your answer is kept as a demonstration (SFT data), made "
            f"{_plural(n_pairs, 'training pair')} against the models' answers, and the conversation continues "
            f"from it."
        )
    if kind == "thumb":
        return (
            f"Thanks for the thumbs {outcome}! A single rating trains the preference-tuned model too (KTO), "
            f"unless ratings are turned off."
        )
    if kind == "all_bad":
        return (
            "Thanks! Noted that every answer was bad: it makes no training pair, and each answer counts as a "
            "thumbs-down rating."
        )
    if outcome == "tie":
        return "Thanks! Tie recorded; a tie makes no training pair."
    if outcome == "both_bad":
        return "Thanks! Noted that both answers were bad; that makes no training pair."
    if n_pairs == 0:
        return "Thanks! Vote saved; it made no training pair because the answers compared had identical text."
    return f"Thanks! Your vote added {_plural(n_pairs, 'training pair')}."
