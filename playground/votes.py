"""What a vote means, written once: a stored vote becomes outcomes (which answer beat which), and the training pairs,
the leaderboard and the win rates all derive from those outcomes.

Pure functions, no database: the rules are the part people argue about, so they live here where they can be read
and tested on their own. The store calls `pairs_of` inside the vote's transaction; the leaderboard and the win
rates call `outcomes_of` on exported votes.

- best, winner only: the winner beats each other answer of the comparison;
- best, full ranking: each answer beats every answer ranked below it;
- pairwise (duel): 'a' or 'b' beats the other; 'tie' is half a win each way; 'both_bad' says nothing;
- correction: the person's own answer beats every model answer of the turn;
- all_bad and thumbs name no winner: no outcome;
- two answers with identical text (after strip) cannot be told apart: no outcome between them.

A decisive outcome (score 1) is a DPO pair (chosen, rejected); a tie is no pair. Besides pairs, votes make the
two other kinds of feedback a round trains on (`FEEDBACK_KINDS`; the store reads them from the votes, see its
schema migration 7):
- a correction is also a demonstration: the person's answer is the ideal answer to its turn (the SFT stage);
- a thumb is a rating of its answer, 👍 desirable or 👎 not; all_bad is a 👎 rating of each model answer of the
  turn, identical texts once (the KTO stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

VOTE_KINDS = ("best", "all_bad", "pairwise", "thumb", "correction")
FEEDBACK_KINDS = ("demonstrations", "pairs", "ratings")
PAIRWISE_OUTCOMES = ("a", "b", "tie", "both_bad")

# An answer as the rules see it: a mapping with at least "id" and "text" (the store adds "arm", "adapter_version").
Answer = Mapping[str, Any]


@dataclass(frozen=True)
class Outcome:
    """`first` met `second` and earned `score`: 1 a win, 0.5 a tie."""

    first: Answer
    second: Answer
    score: float

    @property
    def decisive(self) -> bool:
        return self.score == 1.0


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
        return f"Rank either just the best answer or all {len(answer_ids)} answers; this ranking has {len(ranking)}."
    return None


def same_text(a: Answer, b: Answer) -> bool:
    # Identical texts teach nothing: DPO would see chosen and rejected with the same likelihood, and a rating
    # would count a model beating itself.
    return str(a["text"]).strip() == str(b["text"]).strip()


def outcomes(kind: str, named: Sequence[Answer], outcome: str | None, answers: Sequence[Answer]) -> list[Outcome]:
    """The outcomes of one vote. `named`: the answers the vote names, in its order (best first for 'best', [A, B]
    for 'pairwise', the rated answer for 'thumb', none for 'all_bad'); `answers`: every answer of the comparison."""
    if kind == "best":
        ranked = list(named)
        problem = ranking_problem([a["id"] for a in ranked], [a["id"] for a in answers])
        if problem:
            raise ValueError(problem)
        if len(ranked) == 1:
            found = [Outcome(ranked[0], other, 1.0) for other in answers if other["id"] != ranked[0]["id"]]
        else:
            found = [Outcome(higher, lower, 1.0) for higher, lower in combinations(ranked, 2)]
    elif kind == "pairwise":
        if outcome not in PAIRWISE_OUTCOMES:
            raise ValueError(f"unknown pairwise outcome {outcome!r}")
        a, b = named
        found = {"a": [Outcome(a, b, 1.0)], "b": [Outcome(b, a, 1.0)], "tie": [Outcome(a, b, 0.5)]}.get(outcome, [])
    elif kind == "correction":
        (human,) = named
        found = [Outcome(human, other, 1.0) for other in answers if other["id"] != human["id"]]
    elif kind in ("all_bad", "thumb"):
        found = []
    else:
        raise ValueError(f"unknown vote kind {kind!r}")
    return [o for o in found if not same_text(o.first, o.second)]


def pairs_of(
    kind: str, named: Sequence[Answer], outcome: str | None, answers: Sequence[Answer]
) -> list[tuple[int, int]]:
    """(chosen_id, rejected_id) for every decisive outcome of a vote: its DPO training pairs."""
    return [(o.first["id"], o.second["id"]) for o in outcomes(kind, named, outcome, answers) if o.decisive]


def outcomes_of(vote: Mapping) -> list[Outcome]:
    """The outcomes of an exported vote (`Store.export_votes()`: answers carry the `position` the vote gave them,
    None when it did not name them)."""
    answers = [a if "id" in a else {**a, "id": a["answer_id"]} for a in vote["answers"]]
    named = sorted((a for a in answers if a["position"] is not None), key=lambda a: a["position"])
    if vote["kind"] == "all_bad":
        named = []
    return outcomes(vote["kind"], named, vote["outcome"], answers)


# The finish reason of an answer stopped by the token limit (generation.Answer.finish_reason): an unfinished answer,
# which trains and is scored with its turn left open (training/unfinished.py).
CUT = "length"


def is_cut(finish_reason: str | None) -> bool:
    """Whether an answer with this finish reason stopped at the token limit (a person's answer never does)."""
    return finish_reason == CUT


def to_trl(pair: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A store pair (with history / prompt_text / chosen_text / rejected_text) in TRL's conversational preference
    format, so DPOTrainer applies the model's chat template itself. The prompt is the whole conversation up to and
    including the turn's user message, identical for chosen and rejected (trl's extract_prompt relies on that)."""
    return {
        "prompt": _turn(pair),
        "chosen": [{"role": "assistant", "content": pair["chosen_text"]}],
        "rejected": [{"role": "assistant", "content": pair["rejected_text"]}],
    }


def _turn(row: Mapping[str, Any]) -> list[dict[str, str]]:
    return list(row.get("history") or []) + [{"role": "user", "content": row["prompt_text"]}]


def demonstration_to_trl(row: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A demonstration in TRL's conversational prompt-completion format: SFTTrainer then trains the answer's tokens
    only, given the whole conversation before it."""
    return {"prompt": _turn(row), "completion": [{"role": "assistant", "content": row["text"]}]}


def demonstration_messages(row: Mapping[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A demonstration in TRL's conversational `messages` format (what `trl sft` reads)."""
    example = demonstration_to_trl(row)
    return {"messages": example["prompt"] + example["completion"]}


def rating_to_trl(row: Mapping[str, Any]) -> dict[str, Any]:
    """A rating in TRL's unpaired preference format (KTOTrainer, `trl kto`): label true for 👍."""
    return {
        "prompt": _turn(row),
        "completion": [{"role": "assistant", "content": row["text"]}],
        "label": bool(row["label"]),
    }
