"""The serving reward model, seen from the front door: which one serves, its scores of answers (once written, never
before: the answer is never delayed), and its judgment of each new vote before any round trains on it.

The reward model that serves is the serving version's, or, when that version has none (trained with
`--reward-model false`, or version 0), the newest ready version's below it that has one; none before the first
round that trained one. A rollback rolls the reward model back with the policy.
"""

from __future__ import annotations

import logging
import threading

from . import reward_models
from .store import Store
from .votes import is_cut

log = logging.getLogger(__name__)

NO_REWARD_MODEL = "no reward model yet"


class Judging:
    def __init__(self, store: Store, engine):
        """engine(): the serving Engine (None while the models load)."""
        self.store = store
        self._engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, interval: float = 2.0) -> None:
        """Judge new votes in the background as they come (from the page, the API or the command line): each one is
        judged by the reward model serving then, before a round can take it."""

        def loop():
            while not self._stop.wait(interval):
                try:
                    self.judge_pending()
                except Exception:  # never let one bad answer stop the judging; the next poll retries
                    log.exception("Judging new votes failed")

        if self._thread is None:
            self._thread = threading.Thread(target=loop, name="reward-judge", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def serving(self) -> tuple[int, str] | None:
        """(version, its folder) of the reward model that serves, or None."""
        serving = self.store.serving_version()
        candidates = [
            v
            for v in self.store.versions()
            if v["state"] == "ready" and v["version"] <= serving and reward_models.exists(v["path"])
        ]
        if not candidates:
            return None
        return candidates[-1]["version"], str(reward_models.folder_of(candidates[-1]["path"]))

    def score(self, conversations: list[tuple[list[dict], str]]) -> tuple[int, list[float]] | None:
        """(reward version, scores) of (messages, answer) by the serving reward model; None without one."""
        serving, engine = self.serving(), self._engine()
        if serving is None or engine is None or not conversations:
            return None
        version, path = serving
        return version, engine.rewards.score(version, path, conversations)

    def score_comparison(self, comparison_id: int) -> dict:
        """{"reward_version", "scores": {answer_id: score}} of a stored turn's model answers (stored, so a later
        call and the judgment of a vote read them back); {"reward_version": None} without a reward model."""
        serving = self.serving()
        comparison = self.store.comparison(comparison_id)
        if serving is None or comparison is None or self._engine() is None:
            return {"reward_version": None, "scores": {}}
        version, _ = serving
        answers = [a for a in comparison["answers"] if a["text"].strip()]
        known = self.store.answer_rewards([a["id"] for a in answers], version)
        missing = [a for a in answers if a["id"] not in known]
        if missing:
            messages = list(comparison["history"]) + [{"role": "user", "content": comparison["prompt"]}]
            scored = self.score([(messages, a["text"], not is_cut(a.get("finish_reason"))) for a in missing])
            if scored is not None and scored[0] == version:
                fresh = dict(zip((a["id"] for a in missing), scored[1]))
                self.store.save_answer_rewards(version, fresh)
                known |= fresh
        return {"reward_version": version, "scores": known}

    def judge_pending(self, limit: int = 64, vote_id: int | None = None) -> int:
        """Judge the pairs no reward model judged and no round took yet (of one vote, or all), with the serving reward
        model; returns how many judgments were recorded (a pair a round takes meanwhile is left unjudged:
        store/rewards.py)."""
        pending = self.store.unjudged_pairs(limit, vote_id)
        if not pending or self.serving() is None:
            return 0
        by_comparison = {}
        for pair in self.store.pairs([p["id"] for p in pending]):
            by_comparison.setdefault(pair["comparison_id"], []).append(pair)
        judgments, version = {}, None
        for comparison_id, pairs in by_comparison.items():
            scored = self.score_comparison(comparison_id)
            version = scored["reward_version"]
            for pair in pairs:
                chosen, rejected = pair["chosen_answer_id"], pair["rejected_answer_id"]
                if chosen in scored["scores"] and rejected in scored["scores"]:
                    judgments[pair["id"]] = (scored["scores"][chosen], scored["scores"][rejected])
                elif pair["chosen_arm"] == "human":  # a person's better answer: scored on its own
                    texts = self.score([(_messages(pair), pair["chosen_text"])])
                    if texts is not None and rejected in scored["scores"]:
                        judgments[pair["id"]] = (texts[1][0], scored["scores"][rejected])
        return self.store.record_judgments(version, judgments) if judgments and version is not None else 0

    def verdict_of_vote(self, vote_id: int) -> str | None:
        """What the page says after a vote: whether the reward model agreed with it (None without a judgment)."""
        judged = self.store.judgments_of_vote(vote_id)
        if not judged:
            return None
        agreed = sum(1 for j in judged if j["agreed"])
        version = judged[0]["reward_version"]
        if len(judged) == 1:
            return f"The reward model (v{version}) {'agreed' if agreed else 'disagreed'} with you."
        return f"The reward model (v{version}) agreed with {agreed} of the {len(judged)} pairs your vote made."


def _messages(pair: dict) -> list[dict]:
    return list(pair.get("history") or []) + [{"role": "user", "content": pair["prompt_text"]}]
