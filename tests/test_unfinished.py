"""An answer cut at the token limit trains and is scored as unfinished: its turn is never closed (training/unfinished.py),
in DPO, KTO, the reward model and RL."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers import tiny_round

from playground.settings import RoundSettings
from playground.store import Store
from playground.training.examples import trl_rows
from playground.training.unfinished import closing_ids, open_turn, trainer_class

PROMPT = [{"role": "user", "content": "Why is the sky blue?"}]


def answer(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def pair_rows(chosen_cut: bool, rejected_cut: bool) -> list[dict]:
    return [
        {
            "prompt": PROMPT,
            "chosen": answer(f"Because of scattering, number {i}."),
            "rejected": answer(f"Light from the sun is scattered by the air, and blue light more {i}"),
            "chosen_cut": chosen_cut,
            "rejected_cut": rejected_cut,
        }
        for i in range(4)
    ]


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from playground.models import load_tokenizer

    return load_tokenizer(str(tiny_models["sft"]))


def test_the_closing_tokens_are_the_chat_templates_end_of_turn(tokenizer):
    closing = closing_ids(tokenizer)
    assert tokenizer.decode(list(closing)) == "<|im_end|>\n"  # ChatML, read from the template, not hard-coded
    assert open_turn([5, 6, *closing], closing) == [5, 6]
    assert open_turn([5, 6], closing) == [5, 6], "an open turn stays as it is"


def test_a_store_pair_says_which_answer_was_cut(tmp_path, tokenizer):
    store = Store.open(tmp_path)
    comparison, (a, b) = store.add_comparison(
        "Why is the sky blue?",
        "s1",
        mode="duel",
        answers=[
            {"arm": "pref", "text": "Scattering.", "model": "m", "seed": 1, "finish_reason": "eos"},
            {"arm": "pref", "text": "Light from the sun is", "model": "m", "seed": 2, "finish_reason": "length"},
        ],
    )
    store.vote_pairwise("s1", comparison, a, b, "a")
    store.vote_thumb("s1", b, False)
    (row,) = trl_rows("pairs", store.pending_pairs(), tokenizer, 256)
    assert (row["chosen_cut"], row["rejected_cut"]) == (False, True)
    (rating,) = trl_rows("ratings", store.pending_feedback(["ratings"])["ratings"], tokenizer, 256)
    assert rating["cut"] is True


def make_dpo(tiny_models, tokenizer, tmp_path, rows, open_cut=True):
    from datasets import Dataset
    from peft import get_peft_model
    from trl import DPOTrainer

    from playground.models import load_policy
    from playground.training.stages import dpo_config, lora_config, reference_for

    settings = tiny_round()
    model, _ = load_policy(str(tiny_models["sft"]))
    peft_model = get_peft_model(model, lora_config(settings))
    cls = trainer_class(DPOTrainer) if open_cut else DPOTrainer
    with reference_for(peft_model, "sft"):
        return cls(
            model=peft_model,
            args=dpo_config(settings, tmp_path),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )


def ends_closed(ids, closing) -> bool:
    return tuple(ids[-len(closing) :]) == closing


def test_dpo_leaves_a_cut_answers_turn_open_and_its_reference_sees_the_same_tokens(tiny_models, tokenizer, tmp_path):
    closing = closing_ids(tokenizer)
    trainer = make_dpo(tiny_models, tokenizer, tmp_path, pair_rows(chosen_cut=False, rejected_cut=True))
    data = trainer.train_dataset
    assert all(ends_closed(ids, closing) for ids in data["chosen_ids"]), "a finished answer closes its turn"
    assert not any(ends_closed(ids, closing) for ids in data["rejected_ids"]), "a cut one does not"
    # The reference log-probs were computed after the turns were opened: on the same tokens the policy trains on.
    assert "ref_rejected_logps" in data.column_names
    plain = make_dpo(tiny_models, tokenizer, tmp_path, pair_rows(False, True), open_cut=False).train_dataset
    assert all(ends_closed(ids, closing) for ids in plain["rejected_ids"]), "trl alone closes every turn"
    assert [len(ids) for ids in data["rejected_ids"]] == [len(ids) - len(closing) for ids in plain["rejected_ids"]]
    assert data["ref_rejected_logps"] != plain["ref_rejected_logps"]
    assert data["ref_chosen_logps"] == pytest.approx(plain["ref_chosen_logps"], abs=1e-5)


def test_a_round_trains_with_rpo_when_its_weight_is_set(tiny_models, tokenizer, tmp_path):
    from playground.training.stages import dpo_config

    plain = dpo_config(tiny_round(rpo_weight=0), tmp_path)
    rpo = dpo_config(tiny_round(rpo_weight=0.5), tmp_path)
    assert dpo_config(RoundSettings(), tmp_path).loss_weights == [1.0, 1.0], "RPO by default"
    assert plain.loss_type == ["sigmoid"]
    assert (rpo.loss_type, rpo.loss_weights) == (["sigmoid", "sft"], [1.0, 0.5])


def test_kto_leaves_a_cut_rated_answers_turn_open(tiny_models, tokenizer, tmp_path):
    from datasets import Dataset
    from peft import get_peft_model
    from trl import KTOTrainer

    from playground.models import load_policy
    from playground.training.stages import kto_config, lora_config, reference_for

    settings = tiny_round()
    rows = [
        {"prompt": PROMPT, "completion": answer(f"Answer {i}"), "label": i % 2 == 0, "cut": i < 2} for i in range(4)
    ]
    model, _ = load_policy(str(tiny_models["sft"]))
    peft_model = get_peft_model(model, lora_config(settings))
    with reference_for(peft_model, "sft"):
        trainer = trainer_class(KTOTrainer)(
            model=peft_model,
            args=kto_config(settings, tmp_path, [r["label"] for r in rows]),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    closing = closing_ids(tokenizer)
    data = trainer.train_dataset
    assert [ends_closed(ids, closing) for ids in data["completion_ids"]] == [not c for c in data["cut"]]


def test_the_reward_model_trains_and_scores_a_cut_answer_open(tiny_models, tokenizer, tmp_path):
    from playground import reward_models
    from playground.training.reward_model import train_reward_model

    closing = closing_ids(tokenizer)
    assert ends_closed(reward_models.sequence(tokenizer, PROMPT, "Blue light"), closing)
    assert not ends_closed(reward_models.sequence(tokenizer, PROMPT, "Blue light", False), closing)
    rows = pair_rows(chosen_cut=False, rejected_cut=True)
    model, rm_tokenizer, figures = train_reward_model(
        rows, str(tiny_models["sft"]), replace(tiny_round(), epochs=1), tmp_path / "rm", None, []
    )
    finished, cut = reward_models.score(model, rm_tokenizer, [(PROMPT, "Blue light"), (PROMPT, "Blue light", False)])
    assert finished != cut, "the same text, read finished and unfinished"
    assert figures["pairs"] == len(rows)


def test_rl_scores_cut_samples_open(tokenizer, tmp_path):
    from playground.training.rl import cut_sample, reward_function
    from playground.training.stages import grpo_config

    # Cut samples stay in the loss (most of the SFT model's are cut), scored as what they are.
    assert not grpo_config(tiny_round(), tmp_path).mask_truncated_completions
    ends = {tokenizer.eos_token_id}
    assert cut_sample([5, 6, 7], ends) and not cut_sample([5, tokenizer.eos_token_id], ends)

    seen = []

    class Scorer:  # records the sequences the reward model is asked to score
        def __call__(self, input_ids, attention_mask):
            import torch

            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                seen.append([i for i, m in zip(ids, mask) if m])
            return type("Out", (), {"logits": torch.zeros(len(input_ids), 1)})()

    score = reward_function(Scorer(), tokenizer)
    score([PROMPT, PROMPT], [answer("Done."), answer("Not done")], completion_ids=[[5, tokenizer.eos_token_id], [5, 6]])
    closing = closing_ids(tokenizer)
    assert ends_closed(seen[0], closing) and not ends_closed(seen[1], closing)
