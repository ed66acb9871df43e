"""The reward model each round trains (trl's RewardTrainer on the round's pairs): it ranks what people chose above what
they rejected, it is judged only on votes it never trained on, it scores answers in the server on the SFT weights the
server already holds, and its folder loads with plain transformers + PEFT elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import add_short_vs_long_votes, tiny_round

from playground import reward_models
from playground.core import Playground
from playground.generation import Engine
from playground.models import load_model, load_policy
from playground.settings import ModelSettings
from playground.training import run_round

# The tiny model is random: its reward model needs a few passes at a large step to learn short-over-long.
SETTINGS = tiny_round(reward_learning_rate=2e-2, epochs=4, eval_tokens=0)
SHORT, LONG = "Short answer 99.", "A much longer answer about topic 99, " * 3


def playground_on(tiny_models, tmp_path, settings=SETTINGS) -> Playground:
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    models = ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path))
    return Playground(models, settings, engine=engine)


def test_a_round_trains_a_reward_model_that_ranks_the_chosen_answers_first(tiny_models, tmp_path):
    playground = playground_on(tiny_models, tmp_path)
    try:
        store = playground.store
        add_short_vs_long_votes(store, 8)
        assert run_round(store, playground.data_set.adapters_dir, str(tiny_models["sft"]), SETTINGS) == 1
        version = store.version(1)
        assert reward_models.exists(version["path"])
        figures = version["metrics"]["reward_model"]
        assert figures["pairs"] == 8 and figures["accuracy_train"] >= 0.75
        summary = playground.dashboard.facts()["versions"][0]["reward_model"]
        assert summary == {"pairs": 8, "accuracy_train": figures["accuracy_train"], "agreement": None, "judged": 0}

        # Scored in the server, on held-out texts of the same kind.
        prompt = [{"role": "user", "content": "Question number 99: tell me about topic 99."}]
        version_scored, (short, long) = playground.judging.score([(prompt, SHORT), (prompt, LONG)])
        assert version_scored == 1 and short > long

        # explain gives the explicit reward beside DPO's implicit one: the same score the page shows.
        explained = playground.explain(1, "a", version=1)
        comparison = store.comparison(1)
        answer = next(a for a in comparison["answers"] if a["id"] == explained.answer_id)
        messages = [{"role": "user", "content": comparison["prompt"]}]
        assert explained.reward_model_score == pytest.approx(
            playground.judging.score([(messages, answer["text"])])[1][0]
        )
        assert (
            "reward_model_score" in explained.to_dict()
            and playground.explain(1, "a", version=0).reward_model_score is None
        )
    finally:
        playground.close()


def test_agreement_is_measured_only_on_votes_no_round_has_trained_on(tiny_models, tmp_path):
    playground = playground_on(tiny_models, tmp_path)
    try:
        store, adapters = playground.store, playground.data_set.adapters_dir
        add_short_vs_long_votes(store, 8)
        assert playground.judging.judge_pending() == 0, "no reward model yet: nothing is judged"
        run_round(store, adapters, str(tiny_models["sft"]), SETTINGS)
        trained = {p["id"] for p in store.pairs() if p["round_id"] is not None}
        assert playground.judging.judge_pending() == 0, "the pairs v1 trained on are never judged"

        add_short_vs_long_votes(store, 4, session="later")
        new = {p["id"] for p in store.pairs()} - trained
        assert playground.judging.judge_pending() == 4
        judged = {row["pair_id"]: row for vote in range(1, 13) for row in store.judgments_of_vote(vote)}
        assert set(judged) == new and not set(judged) & trained
        assert {row["reward_version"] for row in judged.values()} == {1}
        agreement = store.reward_agreement()[1]
        assert agreement["judged"] == 4 and agreement["agreement"] >= 0.75
        facts = playground.dashboard.facts()
        assert facts["versions"][0]["reward_model"]["judged"] == 4
        # The Leaderboard's column: the mean score of each player's answers by that reward model (8 answers of the
        # preference arm at version 0, which is the player "sft").
        assert facts["mean_rewards"]["reward_version"] == 1
        assert facts["mean_rewards"]["players"]["sft"]["answers"] == 8
        from playground import leaderboard

        row = leaderboard.table(
            [leaderboard.Standing("sft", 1000, 990, 1010, 3, 1.5)], facts["mean_rewards"]["players"]
        )[0]
        assert row[-1].endswith("(8)") and row[-1][0] in "+-"

        # A judgment of a pair a round has taken is refused, even when asked for directly.
        pair = min(trained)
        assert store.record_judgments(1, {pair: (1.0, 0.0)}) == 0
        assert playground.judge_vote(9).startswith("The reward model (v1)")
    finally:
        playground.close()


def test_the_server_scores_on_the_sft_weights_it_already_holds(tiny_models, tiny_adapters, tmp_path):
    """Shared tensors, also once the serving runtime has put LoRA layers into the model, and the same scores as the
    reward model loaded on a copy of its own."""
    store_dir = tmp_path / "data"
    playground = playground_on(tiny_models, store_dir)
    try:
        add_short_vs_long_votes(playground.store, 8)
        run_round(playground.store, playground.data_set.adapters_dir, str(tiny_models["sft"]), SETTINGS)
        runtime = playground.engine.scoring._torch()
        runtime.attach("v9", str(tiny_adapters[1]))  # the served model now carries LoRA layers
        path = reward_models.folder_of(playground.store.version(1)["path"])
        conversations = [([{"role": "user", "content": f"Question {i}?"}], f"Answer {i}.") for i in range(3)]
        served = playground.engine.rewards.score(1, path, conversations)

        shared = reward_models.shared_base(runtime.loaded.model, runtime.loaded.tokenizer)
        embedding = dict(runtime.loaded.model.named_parameters())["model.embed_tokens.weight"]
        assert shared.model.embed_tokens.weight.data_ptr() == embedding.data_ptr()
        base, tokenizer = reward_models.load_base(str(tiny_models["sft"]))
        own = reward_models.score(reward_models.attach(base, path), tokenizer, conversations)
        assert served == pytest.approx(own, abs=1e-5)
    finally:
        playground.close()


def test_the_reward_model_folder_scores_text_in_a_fresh_process_with_transformers_and_peft(tiny_models, tmp_path):
    store_dir = tmp_path / "data"
    playground = playground_on(tiny_models, store_dir)
    try:
        add_short_vs_long_votes(playground.store, 8)
        run_round(playground.store, playground.data_set.adapters_dir, str(tiny_models["sft"]), SETTINGS)
        out = playground.export_reward_model(1, tmp_path / "exported")
    finally:
        playground.close()
    assert (out / "README.md").read_text().count("AutoModelForSequenceClassification") >= 1
    script = textwrap.dedent(
        f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(tiny_models["sft"])!r})
        model = AutoModelForSequenceClassification.from_pretrained({str(tiny_models["sft"])!r}, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
        model = PeftModel.from_pretrained(model, {str(out)!r}).eval()
        prompt = [{{"role": "user", "content": "Question number 99: tell me about topic 99."}}]
        scores = []
        for answer in ({SHORT!r}, {LONG!r}):
            ids = tokenizer.apply_chat_template(prompt + [{{"role": "assistant", "content": answer}}],
                                                return_tensors="pt", return_dict=True)["input_ids"]
            scores.append(model(input_ids=ids).logits[0, 0].item())
        print(json.dumps(scores))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    short, long = json.loads(result.stdout.strip().splitlines()[-1])
    assert short > long


def test_shared_base_refuses_weights_it_cannot_share(tiny_models):
    model, tokenizer = load_policy(str(tiny_models["sft"]))
    model.to(torch.bfloat16)
    assert reward_models.shared_base(model, tokenizer) is None


def test_a_round_leaves_its_reward_model_for_later_when_another_round_waits(tiny_models, tmp_path):
    """A round is what people wait for: with a round due, the reward model waits, and the idle trainer trains the
    newest version's (watch.py) on the pairs its round trained on."""
    from dataclasses import replace

    from playground.store import Store
    from playground.training.examples import round_waiting
    from playground.training.runner import reward_model_missing, train_missing_reward_model

    store = Store.open(tmp_path)
    add_short_vs_long_votes(store, 8)
    busy = replace(SETTINGS, max_new_pairs=4)  # 4 of the 8 pairs: 4 more wait, a round is due
    assert run_round(store, tmp_path / "adapters", str(tiny_models["sft"]), busy) == 1
    assert not reward_models.exists(store.version(1)["path"]) and reward_model_missing(store) == 1
    # While the round is still due, a reward model gives way between two steps and is left for later ...
    assert train_missing_reward_model(store, 1, str(tiny_models["sft"]), busy) == "interrupted"
    assert not reward_models.exists(store.version(1)["path"]) and reward_model_missing(store) == 1
    # A trainer whose rounds keep failing ("stuck") gives way only to a round asked for, not to the feedback waiting.
    assert round_waiting(store, busy) and not round_waiting(store, busy, stuck=True)
    store.request_round()
    assert round_waiting(store, busy, stuck=True)
    store.take_round_request()
    # ... and once nothing waits (here: a round needs more than waits), the idle trainer trains it.
    idle = replace(busy, min_pairs=100)
    assert train_missing_reward_model(store, 1, str(tiny_models["sft"]), idle) == "published"
    assert reward_models.exists(store.version(1)["path"]) and reward_model_missing(store) is None
    assert store.version(1)["metrics"]["reward_model"]["pairs"] == 4
