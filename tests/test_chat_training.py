"""DPO on conversations: a too-long conversation loses its oldest turns (answers whole), trl tokenizes exactly the
shared history as the prompt, and a round on multi-turn pairs (with a correction) runs on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_round
from transformers import AutoTokenizer

from playground.store import Store
from playground.training import dpo_config, fit_to_length, run_round
from playground.votes import to_trl

FAST = tiny_round(min_pairs=1, batch_size=2, max_length=128)


def conversation(turns: int) -> list[dict]:
    messages = []
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Question {i} about rivers and hills?"},
            {"role": "assistant", "content": f"Answer {i}: rivers run downhill, hills stay put."},
        ]
    return messages


def row(turns: int) -> dict:
    return {
        "prompt": conversation(turns) + [{"role": "user", "content": "And the last question?"}],
        "chosen": [{"role": "assistant", "content": "A short, kind answer."}],
        "rejected": [{"role": "assistant", "content": "A much longer answer that goes on and on " * 3}],
    }


@pytest.mark.slow
def test_a_long_conversation_loses_its_oldest_turns_whole(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["sft"])
    whole = row(6)
    assert fit_to_length(whole, tokenizer, 10_000) == whole  # fits: untouched

    def length(r, side):
        text = tokenizer.apply_chat_template(r["prompt"] + r[side], tokenize=False)
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    fitted = fit_to_length(whole, tokenizer, 160)
    assert length(fitted, "rejected") <= 160 < length(whole, "rejected")
    assert fitted["prompt"] == whole["prompt"][-len(fitted["prompt"]) :]  # a suffix: the oldest turns went
    assert fitted["prompt"][0]["role"] == "user" and len(fitted["prompt"]) % 2 == 1  # whole turns only
    assert fitted["chosen"] == whole["chosen"] and fitted["rejected"] == whole["rejected"]  # answers untouched

    tiny = fit_to_length(whole, tokenizer, 8)  # nothing fits: the turn's own question stays
    assert tiny["prompt"] == [{"role": "user", "content": "And the last question?"}]


def test_trl_tokenizes_the_shared_history_as_the_prompt(tiny_models, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["sft"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["sft"])
    rows = [row(2), row(1)]
    trainer = DPOTrainer(
        model=model,
        args=dpo_config(FAST, tmp_path / "trainer"),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    for example, original in zip(trainer.train_dataset, rows):
        expected = tokenizer.apply_chat_template(original["prompt"], tokenize=False, add_generation_prompt=True)
        expected_ids = tokenizer(expected, add_special_tokens=False).input_ids
        assert example["prompt_ids"] == expected_ids


@pytest.mark.slow
def test_a_round_on_multi_turn_pairs_and_a_correction_runs(tiny_models, tmp_path):
    store = Store.open(tmp_path / "ds")
    texts = {"base": "Rivers are wet.", "sft": "Rivers flow to the sea.", "pref": "Water, mostly."}

    def turn(prompt, history, parent=None):
        answers = [{"arm": arm, "text": text, "model": arm} for arm, text in texts.items()]
        cid, ids = store.add_comparison(
            prompt, "s", answers=answers, history=history, chat_id="c", parent_answer_id=parent
        )
        return cid, dict(zip(texts, ids))

    c1, ids1 = turn("What is a river?", [])
    store.vote_best("s", c1, [ids1["sft"]])
    c2, ids2 = turn("Where does it go?", store.next_history(c1, store.continuation(c1, "s")), ids1["sft"])
    store.add_correction("s", c2, "Downhill, until it meets the sea or a lake.")
    pairs = store.pending_pairs()
    assert len(pairs) == 5 and {len(to_trl(p)["prompt"]) for p in pairs} == {1, 3}
    version = run_round(store, tmp_path / "ds" / "adapters", str(tiny_models["sft"]), FAST, force=True)
    assert version == 1 and store.pending_counts(("pairs",))["pairs"] == 0
    assert (Path(store.version(1)["path"]) / "adapter_model.safetensors").is_file()
