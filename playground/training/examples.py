"""Choosing a round's examples: the pending feedback a round may take (each kind its weight turns on, oldest first,
at most `pairs_per_voter` pieces of one voter's) and when enough of it waits to start one, a replay of earlier examples
of each kind, and each example cut to the training length and put in the trl format of its stage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..prompting import PromptError, fit_conversation
from ..settings import RoundSettings
from ..store import Store
from ..votes import demonstration_to_trl, is_cut, rating_to_trl, to_trl

# The stages of a round, in the order they train, with the kind of feedback each learns from and the trl format
# of that kind. Instruction alignment first; preference alignment (pairs, then single ratings) builds on it.
# Pairs train the policy by one of two routes (`--preference-route`): directly (dpo), or through the round's reward
# model (grpo: RL against it).
STAGES = (("sft", "demonstrations"), ("dpo", "pairs"), ("grpo", "pairs"), ("kto", "ratings"))
KIND_OF = dict(STAGES)
KINDS_IN_ORDER = tuple(dict.fromkeys(KIND_OF.values()))
ROUTE_STAGE = {"dpo": "dpo", "rlhf": "grpo"}
STAGE_TITLES = {
    "sft": "SFT on demonstrations",
    "dpo": "DPO on pairs",
    "grpo": "RL (GRPO) against the reward model",
    "kto": "KTO on ratings",
}
TO_TRL = {"demonstrations": demonstration_to_trl, "pairs": to_trl, "ratings": rating_to_trl}
# Objectives of an ablation (simulate --ablation): the stages each trains, and what that is in words.
OBJECTIVES = {
    "dpo": ("dpo",),
    "sft": ("sft",),
    "sft+dpo": ("sft", "dpo"),
    "sft+dpo+kto": ("sft", "dpo", "kto"),
    "rm+rl": ("grpo",),
    "sft+rm+rl": ("sft", "grpo"),
}
OBJECTIVE_TITLES = {
    "dpo": "preference only",
    "sft": "instruction only",
    "sft+dpo": "both",
    "sft+dpo+kto": "both, and ratings",
    "rm+rl": "preference through a reward model",
    "sft+rm+rl": "both, preference through a reward model",
}


def stages_of(settings: RoundSettings) -> tuple[str, ...]:
    """The stages these settings' weights turn on, in training order."""
    kinds = settings.feedback_kinds()
    skipped = {stage for stage in ROUTE_STAGE.values() if stage != ROUTE_STAGE[settings.preference_route]}
    return tuple(stage for stage, kind in STAGES if kind in kinds and stage not in skipped)


def key_of(kind: str, row: dict):
    """What identifies one example of `kind` (a rating: its vote and answer)."""
    return (row["vote_id"], row["answer_id"]) if kind == "ratings" else row["id"]


@dataclass
class Selection:
    """A round's examples: {kind: rows} of new (pending) and replayed (earlier trained) ones."""

    new: dict[str, list[dict]] = field(default_factory=dict)
    replay: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def new_count(self) -> int:
        return sum(len(rows) for rows in self.new.values())

    def rows(self, kind: str) -> list[dict]:
        return self.new.get(kind, []) + self.replay.get(kind, [])

    def counts(self) -> dict[str, int]:
        """new_<kind> and replayed_<kind> for every kind (what the round records in its hyperparams)."""
        return {
            f"{prefix}_{kind}": len(part.get(kind, []))
            for kind in KINDS_IN_ORDER
            for prefix, part in (("new", self.new), ("replayed", self.replay))
        }


def select_feedback(store: Store, settings: RoundSettings, stages: tuple[str, ...] | None = None) -> Selection:
    """The next round's examples for `stages` (default: those the weights turn on). New: the oldest pending feedback,
    at most `max_new_pairs` pieces, at most `pairs_per_voter` of one voter's (so one script cannot fill a round); the
    rest stays pending. Replay: up to `replay_pairs` earlier examples of each kind, drawn with the round's seed."""
    kinds = [KIND_OF[stage] for stage in (stages_of(settings) if stages is None else stages)]
    new = store.pending_feedback(kinds, limit=settings.max_new_pairs, per_voter=settings.pairs_per_voter)
    replay = {}
    for kind in kinds:
        taken = {key_of(kind, row) for row in new[kind]}
        earlier = [row for row in store.trained_feedback(kind) if key_of(kind, row) not in taken]
        # Pairs keep the draw they always had, so a round on pairs alone is the DPO round it was before other kinds.
        seed = settings.train_seed + len(earlier)
        rng = random.Random(seed if kind == "pairs" else f"{kind}-{seed}")
        replay[kind] = rng.sample(earlier, min(settings.replay_pairs, len(earlier)))
    return Selection(new, replay)


def eligible_counts(store: Store, settings: RoundSettings) -> dict[str, int]:
    """{kind: pending pieces a round could take now} for the kinds the weights turn on, under the per-voter cap: their
    sum is what `min_pairs` is compared with."""
    return store.pending_counts(settings.feedback_kinds(), per_voter=settings.pairs_per_voter)


def round_due(eligible: int, min_pairs: int, requested: bool = False) -> bool:
    """Whether a round starts on `eligible` pieces of feedback (the sum of `eligible_counts`, or what a selection
    took): something waits, and at least `min_pairs` of it unless a round was asked for ("train now")."""
    return eligible > 0 and (requested or eligible >= min_pairs)


def request_honoured(request: dict | None, settings: RoundSettings) -> bool:
    """Whether a round asked for ("train now": `Store.round_requested()`) starts below `min_pairs`. Without a per-voter
    cap (one person's machine) every request does. With one (`--pairs-per-voter`, always on a Space) only the admin's:
    a visitor's request would let one voter get a round trained on their feedback alone, so theirs waits for the rule
    that starts rounds by itself (`min_pairs` pieces counted under the cap)."""
    return request is not None and (bool(request.get("admin")) or not settings.pairs_per_voter)


def round_waiting(store: Store, settings: RoundSettings, stuck: bool = False) -> bool:
    """Whether a round waits to start now (one asked for that the trainer honours, or enough feedback; a `stuck`
    trainer, whose rounds keep failing, starts one only when asked): what work that can come later (a version's
    drift, its reward model) asks between steps, to give way. At a person's pace a round is due every few votes; a
    reward model trained in that gap would hold back the round people wait for."""
    return request_honoured(store.round_requested(), settings) or (
        not stuck and round_due(sum(eligible_counts(store, settings).values()), settings.min_pairs)
    )


def min_pairs_in_force(trainer_state: dict | None, default: int) -> int:
    """The `min_pairs` rounds wait for: the trainer's own, as its state reports it (a trainer started elsewhere may
    have its own), else `default`."""
    return (trainer_state or {}).get("min_pairs") or default


def fit_to_length(row: dict, tokenizer, max_length: int) -> dict:
    """An example whose conversation is too long for `max_length` tokens loses its OLDEST turns (a user message and
    the answer after it, together), never an answer and never the turn's own question. trl would otherwise cut the
    prompt's start mid-message (or the answers' end); for a pair, the same cut for chosen and rejected keeps their
    prompt equal."""
    if not getattr(tokenizer, "chat_template", None):
        return row
    answers = [row[side] for side in ("chosen", "rejected", "completion") if side in row]

    def tokens(prompt) -> int:
        texts = (tokenizer.apply_chat_template(prompt + answer, tokenize=False) for answer in answers)
        return max(len(tokenizer(text, add_special_tokens=False).input_ids) for text in texts)

    try:  # the same rule generation fits a conversation by: whole turns go, oldest first
        prompt, _ = fit_conversation(list(row["prompt"]), tokens, max_length)
    except PromptError:  # even the turn's own question is too long with its answers: trl truncates what is left
        prompt = list(row["prompt"])[-1:]
    return {**row, "prompt": prompt}


def trl_rows(kind: str, rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """The examples of one stage in its trl format, fitted to the training length; pairs and ratings also say which
    answers were cut at the token limit (`chosen_cut`, `rejected_cut`; `cut`), so they train as unfinished
    (unfinished.py)."""
    return [fit_to_length(TO_TRL[kind](row) | cut_flags(kind, row), tokenizer, max_length) for row in rows]


def cut_flags(kind: str, row: dict) -> dict:
    """Which answers of a store row stopped at the token limit (people's written answers never did)."""
    if kind == "pairs":
        return {side + "_cut": is_cut(row.get(side + "_finish_reason")) for side in ("chosen", "rejected")}
    if kind == "ratings":
        return {"cut": is_cut(row.get("finish_reason"))}
    return {}
