"""The reward model's view (a part of `Store`): the score a version's reward model gave each answer, and whether it
agreed with the person on each pair it judged.

A judgment is recorded only for a pair no round has taken (not in `round_pairs`, finished or not): the reward model
that judges it has never trained on it, so `agreement` is a held-out measure, each new vote a fresh test
(prequential). A pair a round took before it was judged stays unjudged.
"""

from __future__ import annotations

import time

from .database import from_row, to_json
from .errors import StoreError

_UNTAKEN = "NOT EXISTS (SELECT 1 FROM round_pairs rp WHERE rp.pair_id = p.id)"


class Rewards:
    def set_reward_model(self, version: int, figures: dict) -> None:
        """What the trainer measured of `version`'s reward model once its folder is in place (`metrics.reward_model`;
        the update also brings the folder into the durable copy)."""
        with self.write() as conn:
            if not conn.execute(
                "UPDATE adapter_versions SET metrics = json_set(metrics, '$.reward_model', json(?)) WHERE version = ?",
                (to_json(figures), version),
            ).rowcount:
                raise StoreError(f"Adapter version {version} does not exist.")

    def save_answer_rewards(self, reward_version: int, scores: dict[int, float]) -> None:
        """{answer_id: score} by the reward model of `reward_version` (a score once given stays)."""
        now = time.time()
        with self.write() as conn:
            conn.executemany(
                "INSERT INTO answer_rewards (answer_id, reward_version, score, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (answer_id, reward_version) DO NOTHING",
                [(answer_id, reward_version, float(score), now) for answer_id, score in scores.items()],
            )

    def answer_rewards(self, answer_ids, reward_version: int) -> dict[int, float]:
        """{answer_id: score} of these answers that `reward_version`'s reward model scored."""
        ids = list(answer_ids)
        if not ids:
            return {}
        with self.read() as conn:
            rows = conn.execute(
                "SELECT answer_id, score FROM answer_rewards WHERE reward_version = ? AND answer_id IN "
                f"({','.join('?' * len(ids))})",
                (reward_version, *ids),
            ).fetchall()
        return {r["answer_id"]: r["score"] for r in rows}

    def unjudged_pairs(self, limit: int = 64, vote_id: int | None = None) -> list[dict]:
        """Pairs no reward model judged and no round took (of one vote, or all), oldest first: {id,
        chosen_answer_id, rejected_answer_id}."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT p.id, p.chosen_answer_id, p.rejected_answer_id FROM pairs p "
                f"WHERE {_UNTAKEN} AND NOT EXISTS (SELECT 1 FROM reward_judgments j WHERE j.pair_id = p.id) "
                "AND (? IS NULL OR p.vote_id = ?) ORDER BY p.id LIMIT ?",
                (vote_id, vote_id, limit),
            ).fetchall()
        return [from_row(r) for r in rows]

    def record_judgments(self, reward_version: int, judgments: dict[int, tuple[float, float]]) -> int:
        """{pair_id: (chosen score, rejected score)} by `reward_version`'s reward model; only pairs still untaken by any
        round and unjudged are recorded (the check and the write are one transaction). Returns how many."""
        now = time.time()
        written = 0
        with self.write() as conn:
            for pair_id, (chosen, rejected) in judgments.items():
                written += conn.execute(
                    "INSERT INTO reward_judgments (pair_id, reward_version, chosen_score, rejected_score, created_at) "
                    f"SELECT p.id, ?, ?, ?, ? FROM pairs p WHERE p.id = ? AND {_UNTAKEN} "
                    "ON CONFLICT (pair_id) DO NOTHING",
                    (reward_version, float(chosen), float(rejected), now, pair_id),
                ).rowcount
        return written

    def judgments_of_vote(self, vote_id: int) -> list[dict]:
        """The judgments of a vote's pairs: {pair_id, reward_version, chosen_score, rejected_score, agreed}."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT j.*, j.chosen_score > j.rejected_score AS agreed FROM reward_judgments j "
                "JOIN pairs p ON p.id = j.pair_id WHERE p.vote_id = ? ORDER BY j.pair_id",
                (vote_id,),
            ).fetchall()
        return [from_row(r) for r in rows]

    def reward_agreement(self) -> dict[int, dict]:
        """{reward_version: {"agreement", "judged"}}: the share of the pairs it judged where it scored the person's
        choice higher (a tie counts as disagreeing), and how many it judged."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT reward_version, count(*) AS judged, avg(chosen_score > rejected_score) AS agreement "
                "FROM reward_judgments GROUP BY reward_version ORDER BY reward_version"
            ).fetchall()
        return {r["reward_version"]: {"agreement": r["agreement"], "judged": r["judged"]} for r in rows}

    def mean_rewards_by_player(self) -> dict:
        """{"reward_version", "players": {player: {"mean_reward", "answers"}}}: the mean score of each leaderboard
        player's answers (leaderboard.player: base, sft, pref vN) by the newest reward model that scored answers, so
        every player is scored by the same one; reward_version None when none has."""
        with self.read() as conn:
            version = conn.execute("SELECT max(reward_version) FROM answer_rewards").fetchone()[0]
            if version is None:
                return {"reward_version": None, "players": {}}
            rows = conn.execute(
                "SELECT CASE WHEN a.arm = 'pref' AND a.adapter_version > 0 THEN 'pref v' || a.adapter_version "
                "WHEN a.arm = 'base' THEN 'base' ELSE 'sft' END AS player, avg(r.score) AS mean_reward, "
                "count(*) AS answers FROM answer_rewards r JOIN answers a ON a.id = r.answer_id "
                "WHERE r.reward_version = ? AND a.arm <> 'human' GROUP BY player",
                (version,),
            ).fetchall()
        return {
            "reward_version": version,
            "players": {r["player"]: {"mean_reward": r["mean_reward"], "answers": r["answers"]} for r in rows},
        }
