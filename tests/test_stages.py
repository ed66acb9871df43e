"""Every kind of feedback trains, each with the loss made for it: demonstrations (SFT), pairs (DPO), single ratings
(KTO), in stages on one adapter, on tiny models; what counts towards a round; what each version learned from."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import add_compare, add_short_vs_long_votes, pragmas, tiny_round

from playground.settings import RoundSettings
from playground.store import Store, VoteError
from playground.training import eligible_counts, kto_class_weights, run_round, select_feedback
from playground.training.stages import kto_batches

ROOT = Path(__file__).resolve().parent.parent
# A large learning rate so that one tiny round visibly moves a tiny model; no drift evaluation (tested elsewhere).
FAST = tiny_round(epochs=2, batch_size=2, eval_tokens=0)


def rated_turn(store: Store, i: int, session: str) -> tuple[int, dict]:
    texts = {"base": f"Nope {i}.", "sft": f"Yes, short {i}.", "pref": f"A long rambling answer number {i} " * 3}
    return add_compare(store, f"Question {i} to rate?", texts, session=session)


def logprob_sum(sft_dir, adapter, messages: list[dict], answer: str) -> float:
    """Σ log π(answer | conversation) with plain transformers + peft: the answer's tokens are what the chat template
    adds after the conversation (as trl tokenizes them)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    ids = torch.tensor([tokenizer(full, add_special_tokens=False).input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    return float(logprobs[start - 1 :].gather(1, ids[0, start:, None]).sum())


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---- what the votes make ---------------------------------------------------------------------------------------


def test_votes_make_demonstrations_and_ratings_and_a_round_takes_them(tmp_path):
    store = Store.open(tmp_path)
    same = add_compare(store, "All bad?", {"base": "Same text.", "sft": "same text. ", "pref": "Other."})
    # "Same text." and "same text. " differ (case): three distinct answers, three thumbs-down ratings.
    store.vote_all_bad("s1", same[0])
    dup = add_compare(store, "All bad again?", {"base": "Twice.", "sft": " Twice.\n", "pref": "Once."})
    store.vote_all_bad("s1", dup[0])  # identical after strip: rated once
    comparison, ids = rated_turn(store, 1, "s2")
    store.vote_thumb("s2", ids["sft"], True)
    receipt = store.add_correction("s2", comparison, "The ideal answer.")
    assert "demonstration" in receipt.message and receipt.pairs_created == 3
    human = store.demonstrations()[0]["id"]
    with pytest.raises(VoteError, match="rate the models' answers"):
        store.vote_thumb("s2", human, False)

    ratings = store.ratings()
    assert [(r["text"].strip(), r["label"]) for r in ratings] == [
        ("Same text.", 0),
        ("same text.", 0),
        ("Other.", 0),
        ("Twice.", 0),
        ("Once.", 0),
        ("Yes, short 1.", 1),
    ]
    assert [d["text"] for d in store.demonstrations()] == ["The ideal answer."]
    totals = store.feedback_totals()
    assert {k: v["total"] for k, v in totals.items()} == {"demonstrations": 1, "pairs": 3, "ratings": 6}

    settings = RoundSettings(min_pairs=8)
    assert eligible_counts(store, settings) == {"demonstrations": 1, "pairs": 3, "ratings": 6}
    # Weights 0: those kinds neither count nor train.
    assert eligible_counts(store, dataclasses.replace(settings, sft_weight=0, rating_weight=0)) == {"pairs": 3}
    # The per-voter cap holds over all kinds together, each voter's oldest feedback first.
    capped = select_feedback(store, dataclasses.replace(settings, pairs_per_voter=4))
    assert {k: len(v) for k, v in capped.new.items()} == {"demonstrations": 1, "pairs": 2, "ratings": 4 + 1}

    chosen = select_feedback(store, settings)
    run = store.start_round(
        0,
        [p["id"] for p in chosen.new["pairs"]],
        {},
        pid=None,
        demonstration_ids=[d["id"] for d in chosen.new["demonstrations"]],
        rating_keys=[(r["vote_id"], r["answer_id"]) for r in chosen.new["ratings"]],
    )
    assert store.pending_counts() == {"demonstrations": 1, "pairs": 3, "ratings": 6}, "pending until it is done"
    version = store.finish_round(run, tmp_path / "adapter", {})
    assert store.pending_counts() == {"demonstrations": 0, "pairs": 0, "ratings": 0}
    assert store.version(version)["learned_from"] == {"demonstrations": 1, "pairs": 3, "ratings": 6}
    assert [len(store.trained_feedback(k)) for k in ("demonstrations", "pairs", "ratings")] == [1, 3, 6]
    # The next round replays earlier examples of every kind.
    replay = select_feedback(store, dataclasses.replace(settings, replay_pairs=2)).replay
    assert {k: len(v) for k, v in replay.items()} == {"demonstrations": 1, "pairs": 2, "ratings": 2}


def test_kto_needs_two_answers_a_batch_and_balances_thumbs():
    assert kto_batches(RoundSettings(batch_size=1, grad_accumulation=4)) == (2, 2)
    assert kto_batches(RoundSettings(batch_size=4, grad_accumulation=1)) == (4, 1)
    assert kto_class_weights([True, False, False, False]) == (1.0, pytest.approx(1 / 3))
    assert kto_class_weights([True, True, False]) == (0.5, 1.0)
    assert kto_class_weights([False, False]) == (1.0, 1.0)


# ---- each stage does what its loss says -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_round_on_demonstrations_only_makes_them_more_likely(tiny_models, tmp_path):
    store = Store.open(tmp_path)
    for i in range(4):
        comparison, _ = rated_turn(store, i, f"writer{i}")
        store.add_correction(f"writer{i}", comparison, f"The ideal answer, number {i}.")
    version = run_round(store, tmp_path / "adapters", str(tiny_models["sft"]), FAST, stages=("sft",))
    row = store.version(version)
    assert row["learned_from"] == {"demonstrations": 4, "pairs": 0, "ratings": 0}
    assert {s["stage"] for s in store.round_steps()} == {"sft"}
    assert store.pending_counts(("demonstrations",)) == {"demonstrations": 0}
    assert store.pending_counts(("pairs",))["pairs"] == 12, "an instruction-only round leaves the pairs to DPO"
    for demo in store.demonstrations():
        messages = user(demo["prompt_text"])
        before = logprob_sum(tiny_models["sft"], None, messages, demo["text"])
        after = logprob_sum(tiny_models["sft"], row["path"], messages, demo["text"])
        assert after > before + 1.0, (demo["text"], before, after)


@pytest.mark.slow
def test_a_round_on_ratings_only_moves_thumbs_up_up_and_thumbs_down_down(tiny_models, tmp_path):
    store = Store.open(tmp_path)
    for i in range(4):
        comparison, ids = rated_turn(store, i, f"rater{i}")
        store.vote_thumb(f"rater{i}", ids["sft"], True)
        store.vote_thumb(f"rater{i}", ids["pref"], False)
    settings = dataclasses.replace(FAST, sft_weight=0, rating_weight=1.0)  # the tiny models' learning rate in full
    assert eligible_counts(store, settings) == {"pairs": 0, "ratings": 8}, "someone who only rates gets a round"
    version = run_round(store, tmp_path / "adapters", str(tiny_models["sft"]), settings)
    row = store.version(version)
    assert row["hyperparams"]["stages"] == ["kto"] and row["learned_from"]["ratings"] == 8
    steps = store.round_steps()
    assert steps and all(s["stage"] == "kto" and s["loss_kto"] is not None for s in steps)
    for rating in store.ratings():
        messages = user(rating["prompt_text"])
        reward = logprob_sum(tiny_models["sft"], row["path"], messages, rating["text"]) - logprob_sum(
            tiny_models["sft"], None, messages, rating["text"]
        )  # implicit reward / β
        assert (reward > 0) == bool(rating["label"]), (rating["text"], rating["label"], reward)


@pytest.mark.slow
def test_a_mixed_round_runs_the_stages_in_order_and_records_each_loss(tiny_models, tmp_path):
    from playground.data_sets import DataSet

    data_set = DataSet.for_models(tmp_path, str(tiny_models["sft"]), str(tiny_models["sft"]))
    store = data_set.open_store()
    add_short_vs_long_votes(store, 4)
    for i in range(2):
        comparison, ids = rated_turn(store, i, f"r{i}")
        store.vote_thumb(f"r{i}", ids["sft"], True)
        store.vote_thumb(f"r{i}", ids["pref"], False)
        store.add_correction(f"r{i}", comparison, f"The ideal answer number {i}.")
    version = run_round(store, data_set.adapters_dir, str(tiny_models["sft"]), FAST)
    steps = store.round_steps()
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)), "numbered across the stages"
    order = [s["stage"] for s in steps]
    assert order == sorted(order, key=["sft", "dpo", "kto"].index) and set(order) == {"sft", "dpo", "kto"}
    for s in steps:
        assert s[f"loss_{s['stage']}"] == s["loss"] is not None
    metrics = store.version(version)["metrics"]
    assert {"final_loss_sft", "final_loss_dpo", "final_loss_kto"} <= metrics.keys()
    assert metrics["final_loss"] == metrics["final_loss_dpo"] and metrics["final_reward_accuracy"] is not None
    assert set(metrics["stage_seconds"]) == {"sft", "dpo", "kto"}
    assert store.version(version)["learned_from"] == {"demonstrations": 2, "pairs": 4 + 6, "ratings": 4}
    folder = Path(store.version(version)["path"])
    assert not (folder / "ref").exists(), "trl's frozen reference copy is not saved with the adapter"
    meta = json.loads((folder / "playground.json").read_text())
    assert len(meta["demonstrations"]) == 2 and len(meta["ratings"]) == 4 and len(meta["pairs"]) == 10

    # `versions --json` says what each version learned from.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "versions",
            "--json",
            "--sft",
            str(tiny_models["sft"]),
            "--base",
            str(tiny_models["sft"]),
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    (listed,) = json.loads(result.stdout)["versions"]
    assert listed["learned_from"] == {"demonstrations": 2, "pairs": 10, "ratings": 4}


@pytest.mark.slow
def test_with_both_weights_0_a_round_is_exactly_a_plain_trl_dpo_round(tiny_models, tmp_path):
    from datasets import Dataset
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import set_seed
    from trl import DPOTrainer

    from playground.models import load_policy
    from playground.training import dpo_config, fit_to_length
    from playground.training.stages import lora_config
    from playground.votes import to_trl

    store = Store.open(tmp_path)
    add_short_vs_long_votes(store, 4)
    comparison, ids = rated_turn(store, 9, "rater")
    store.vote_thumb("rater", ids["sft"], True)
    store.add_correction("rater", comparison, "The ideal answer.")
    pairs = store.pending_pairs()
    off = dataclasses.replace(FAST, sft_weight=0, rating_weight=0)
    version = run_round(store, tmp_path / "adapters", str(tiny_models["sft"]), off)
    ours = load_file(str(Path(store.version(version)["path"]) / "adapter_model.safetensors"))
    assert store.pending_counts() == {"demonstrations": 1, "pairs": 0, "ratings": 1}, "kept for when they are on"
    assert {s["stage"] for s in store.round_steps()} == {"dpo"}

    # Today's DPO round: a plain model and a LoRA config handed to trl, which takes the model with its adapter
    # disabled as the reference; the same rows, order, config and seed.
    model, tokenizer = load_policy(str(tiny_models["sft"]))
    set_seed(off.train_seed)
    rows = [fit_to_length(to_trl(p), tokenizer, off.max_length) for p in pairs]
    trainer = DPOTrainer(
        model=model,
        args=dpo_config(off, tmp_path / "plain"),
        processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows).shuffle(seed=off.train_seed),
        peft_config=lora_config(off),
    )
    trainer.train()
    plain = get_peft_model_state_dict(trainer.model)
    assert ours.keys() == plain.keys()
    assert all(torch.equal(ours[k], plain[k]) for k in ours), "the same adapter, to the bit"


def test_a_stage_weight_of_0_leaves_its_feedback_out_of_the_count(tmp_path):
    store = Store.open(tmp_path)
    for i in range(8):
        _, ids = rated_turn(store, i, f"rater{i}")
        store.vote_thumb(f"rater{i}", ids["sft"], True)
    settings = RoundSettings(min_pairs=8)
    assert sum(eligible_counts(store, settings).values()) == 8
    off = dataclasses.replace(settings, rating_weight=0)
    assert sum(eligible_counts(store, off).values()) == 0
    # Below min_pairs run_round returns before loading anything: no model needed to see it decline.
    assert run_round(store, tmp_path / "adapters", "no-model-needed", off) is None
    with pytest.raises(ValueError, match="rating_weight must be 0"):
        RoundSettings(rating_weight=-1)


def test_the_stages_view_says_what_each_dataset_trains_and_what_the_latest_ablation_found(tmp_path):
    from playground.dashboard import compute
    from playground.ui.stages import stages_markdown

    store = Store.open(tmp_path)
    comparison, ids = rated_turn(store, 1, "s")
    store.vote_best("s", comparison, [ids["sft"]])
    store.vote_thumb("s", ids["pref"], False)
    store.add_correction("s", comparison, "Better.")
    run = store.start_round(
        0,
        [p["id"] for p in store.pending_pairs()],
        {},
        pid=None,
        demonstration_ids=[d["id"] for d in store.demonstrations()],
    )
    store.finish_round(run, tmp_path / "adapter", {})
    view = stages_markdown(compute(store), RoundSettings(rating_weight=0))
    for text in (
        "| people gave | 1 better answer written | 1 ranked comparison (best, ranking, duel) → 5 pairs",
        "1 single rating |",
        "| waiting for a round | 0 | 0 pairs, 1 ratings |",
        "| latest version that learned from it | v1 | v1 (pairs), none yet (ratings) |",
        "| weight | 1 (`--sft-weight`) | pairs 1; ratings off (`--rating-weight 0`) |",
        "has not been measured for these models yet",
    ):
        assert text in view, (text, view)

    figures = {"win_rate": 0.75, "ties": 0.25, "ppl_sft": 9.5, "kl": 0.3, "mean_length": 40.0, "seconds": 61.0}
    store.save_ablation(
        {
            "oracle": "shorter",
            "votes": {"votes": 32, "corrections": 8, "ratings": 20},
            "heldout_prompts": 15,
            "ablation": {
                "dpo": figures,
                "sft": figures | {"win_rate": 0.5},
                "sft+dpo": {"skipped": "no demonstrations recorded"},
            },
        }
    )
    view = stages_markdown(compute(store), RoundSettings())
    assert "latest ablation: oracle `shorter`, 32 votes, 8 better answers, 20 ratings" in view
    assert "| dpo | preference only | 0.75 | 25% | 9.50 | 0.30 | 40.0 | – | 61 |" in view
    assert "| sft | instruction only | 0.50 |" in view
    assert "| sft+dpo | both | skipped: no demonstrations recorded | – | – | – | – | – |" in view
    # An ablation saved before ties were counted shows them as not measured.
    del figures["ties"]
    store.save_ablation({**store.latest_ablation(), "ablation": {"dpo": figures}})
    assert "| dpo | preference only | 0.75 | – | 9.50 |" in stages_markdown(compute(store), RoundSettings())


def test_feedback_given_before_the_upgrade_trains_too(tmp_path):
    """Demonstrations and ratings are read from the votes, so those cast before schema 7 wait for a round."""
    import sqlite3

    from playground.store import MIGRATIONS

    store = Store.open(tmp_path)
    comparison, ids = rated_turn(store, 1, "s")
    store.vote_thumb("s", ids["sft"], True)
    store.add_correction("s", comparison, "Better.")
    other, _ = rated_turn(store, 2, "s")
    store.vote_all_bad("s", other)
    conn = sqlite3.connect(store.path)  # back to schema 6, as a store from before this migration was
    for statement in (
        "DROP TABLE answer_rewards",  # schema 8 (reward models), after the one this test is about
        "DROP TABLE reward_judgments",
        "DROP VIEW demonstrations",
        "DROP VIEW ratings",
        "DROP TABLE round_demonstrations",
        "DROP TABLE round_ratings",
        "ALTER TABLE rounds DROP COLUMN demonstrations_used",
        "ALTER TABLE rounds DROP COLUMN ratings_used",
        "ALTER TABLE round_steps DROP COLUMN stage",
        "PRAGMA user_version = 6",
    ):
        conn.execute(statement)
    conn.commit()
    conn.close()
    upgraded = Store.open(tmp_path)
    assert pragmas(upgraded)["user_version"] == len(MIGRATIONS)
    assert upgraded.pending_counts() == {"demonstrations": 1, "pairs": 3, "ratings": 1 + 3}
