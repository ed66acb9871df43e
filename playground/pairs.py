"""How votes become DPO preference pairs.

Pure functions, no database: the rules are the part people argue about, so they live here where they
can be read and tested on their own. The store calls them inside the vote's transaction.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Mapping, Sequence

VOTE_KINDS = ("best", "all_bad", "pairwise", "thumb")
PAIRWISE_OUTCOMES = ("a", "b", "tie", "both_bad")

# An answer as the rules see it: a mapping with at least "id" and "text".
Answer = Mapping[str, Any]


def ranking_problem(ranking: Sequence[int], answer_ids: Sequence[int]) -> str | None:
    """Why a 'best' ranking (answer ids, best first) is unusable, or None when it is fine.

    A ranking is either just the winner or an ordering of every answer: a partial order of two out of
    three would silently claim nothing about the third, which is ambiguous, so it is refused.
    """
    if not ranking:
        return "Pick at least the best answer."
    if len(set(ranking)) != len(ranking):
        return "The ranking names the same answer more than once."
    if len(ranking) > 1 and set(ranking) != set(answer_ids):
        return (
            f"Rank either just the best answer or all {len(answer_ids)} answers; "
            f"this ranking has {len(ranking)}."
        )
    return None


def same_text(a: Answer, b: Answer) -> bool:
    # Identical texts teach DPO nothing but noise: chosen and rejected would have the same likelihood.
    return str(a["text"]).strip() == str(b["text"]).strip()


def pairs_from_vote(
    kind: str,
    ranked_answers: Sequence[Answer],
    outcome: str | None,
    all_answers: Sequence[Answer],
) -> list[tuple[int, int]]:
    """(chosen_id, rejected_id) pairs implied by one vote.

    - best: `ranked_answers` best first. Just the winner means it beats every other answer of the
      comparison; a full ranking means each answer beats every answer ranked below it.
    - pairwise: `ranked_answers` is [A, B]; outcome 'a' or 'b' gives one pair, 'tie'/'both_bad' none.
    - all_bad, thumb: no pairs (no winner / no opponent).
    Pairs whose two texts are identical (after strip) are dropped.
    """
    if kind == "best":
        ranked = list(ranked_answers)
        problem = ranking_problem([a["id"] for a in ranked], [a["id"] for a in all_answers])
        if problem:
            raise ValueError(problem)
        if len(ranked) == 1:
            best = ranked[0]
            candidates = [(best, other) for other in all_answers if other["id"] != best["id"]]
        else:
            candidates = list(combinations(ranked, 2))  # (higher, lower) for every i < j
    elif kind == "pairwise":
        if outcome not in PAIRWISE_OUTCOMES:
            raise ValueError(f"unknown pairwise outcome {outcome!r}")
        a, b = ranked_answers
        candidates = {"a": [(a, b)], "b": [(b, a)]}.get(outcome, [])
    elif kind in ("all_bad", "thumb"):
        candidates = []
    else:
        raise ValueError(f"unknown vote kind {kind!r}")
    return [(c["id"], r["id"]) for c, r in candidates if not same_text(c, r)]


def to_trl(pair: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A store pair (with prompt_text / chosen_text / rejected_text) in TRL's conversational
    preference format, so DPOTrainer applies the model's chat template itself."""
    return {
        "prompt": [{"role": "user", "content": pair["prompt_text"]}],
        "chosen": [{"role": "assistant", "content": pair["chosen_text"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected_text"]}],
    }
