"""An answer cut at the token limit is unfinished, and trains as one.

About three in four of the embedded SFT model's answers stop at the page's 128-token limit. trl's conversational
formats render every answer through the chat template, which closes the assistant's turn (`<|im_end|>` for ChatML),
so a cut answer would teach "stop here" at the very token where the model was stopped. On both sides of a pair that
is noise; for a voter who prefers shorter answers it is noise on top of the signal.

trl has no per-example switch for this, so each trainer that learns from model answers (DPO, KTO, the reward model)
gets a thin subclass: after trl has tokenized its data set (and before DPO and KTO compute their reference
log-probs from it), the tokens that close the turn are taken off the sides marked cut. What closes a turn is the
chat template's own business: it is read from the template (`continue_final_message`, transformers' way of leaving
the last message open), not hard-coded. Demonstrations are written by people and always finished; GRPO rewards its
cut samples by asking the reward model about them with their turn open (rl.py).

KTO's KL estimate pairs each prompt with a neighbour's completion inside trl; those mismatched samples keep trl's
tokenization (they estimate a baseline, they are not trained towards).
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=8)
def closing_ids(tokenizer) -> tuple[int, ...]:
    """The token ids the chat template puts after an assistant message's content to close its turn (empty without a
    chat template, or when the template cannot leave a turn open)."""
    if not getattr(tokenizer, "chat_template", None):
        return ()
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    try:
        closed = list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])
        open_ = list(
            tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True, continue_final_message=True)[
                "input_ids"
            ]
        )
    except (ValueError, TypeError, KeyError):
        return ()
    if len(open_) >= len(closed) or closed[: len(open_)] != open_:
        return ()
    return tuple(closed[len(open_) :])


def open_turn(ids: list[int], closing: tuple[int, ...]) -> list[int]:
    """`ids` without the turn's closing tokens at their end (as they are when nothing closes them)."""
    k = len(closing)
    if k and len(ids) > k and tuple(ids[-k:]) == closing:
        return list(ids[:-k])
    return list(ids)


def open_cut_sides(dataset, tokenizer, sides: dict[str, str]):
    """trl's tokenized `dataset` with the turns of cut answers left open. `sides`: {flag column: ids column}, e.g.
    {"chosen_cut": "chosen_ids"}; a data set without a flag column is returned as it is."""
    closing = closing_ids(tokenizer)
    present = {flag: ids for flag, ids in sides.items() if flag in dataset.column_names}
    if not closing or not present:
        return dataset

    def reopen(example):
        return {
            ids: open_turn(example[ids], closing) if example[flag] else example[ids] for flag, ids in present.items()
        }

    return dataset.map(reopen, desc="Leaving the turns of cut answers open")


def trainer_class(base):
    """`base` (a trl trainer class) whose prepared data set leaves the turns of cut answers open."""
    sides = SIDES[base.__name__]

    class OpenCutAnswers(base):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            return open_cut_sides(dataset, tokenizer, sides)

    OpenCutAnswers.__name__ = OpenCutAnswers.__qualname__ = f"OpenCut{base.__name__}"
    return OpenCutAnswers


# The flag columns our rows carry (examples.trl_rows) and the token columns trl's trainers make of each side.
SIDES = {
    "DPOTrainer": {"chosen_cut": "chosen_ids", "rejected_cut": "rejected_ids"},
    "RewardTrainer": {"chosen_cut": "chosen_ids", "rejected_cut": "rejected_ids"},
    "KTOTrainer": {"cut": "completion_ids"},
}
