"""Drift per version (drift.py): the metrics on hand-made cases, the samples' log-probabilities against an
independent computation, and the trainer measuring each version after publishing it (tiny models)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import add_short_vs_long_votes, tiny_round

from playground import drift
from playground.core import Playground
from playground.generation import Engine
from playground.models import load_model, load_policy
from playground.settings import ModelSettings
from playground.training import run_round

FAST = tiny_round(eval_tokens=12)
PLAN = drift.EvalPlan(("Tell me about cats.", "What is two plus two?", "Write a haiku about rain."), 12, 0)


def test_distinct_2_and_the_summary_on_a_hand_made_case():
    # bigrams: (a b) (b a) (a b) | (a b) (b c): 5 in all, 3 distinct
    assert drift.distinct_n(["a b a b", "A b c"]) == pytest.approx(3 / 5)
    assert drift.distinct_n(["one", ""]) is None
    samples = [
        {"text": "a b a b", "tokens": 4, "logprob": -2.0, "logprob_sft": -3.0, "kl": 0.5},
        {"text": "a b c", "tokens": 12, "logprob": -5.0, "logprob_sft": -4.0, "kl": 0.25},
    ]
    got = drift.summarize(samples, max_new_tokens=12)
    assert got["mean_tokens"] == 8
    assert got["hit_limit"] == 0.5
    assert got["distinct_2"] == pytest.approx(0.6)
    assert got["kl_to_sft"] == pytest.approx(0.375)
    assert got["sft_perplexity"] == pytest.approx(math.exp(7 / 16))


def test_the_kl_estimate_on_a_hand_made_case():
    same = torch.tensor([-1.0, -2.0])
    assert drift.kl_estimate(same, same) == 0
    # d = log π_SFT − log π = [−1, +1]: (e^−1 − 1 + 1) + (e − 1 − 1)
    got = drift.kl_estimate(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]))
    assert got == pytest.approx(math.exp(-1) + math.exp(1) - 2)
    assert got > 0
    # Its mean over samples from π is KL(π ‖ π_SFT): exact for a two-outcome distribution, one token.
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.5, 0.5])
    mean = sum(p[i] * drift.kl_estimate(p[i : i + 1].log(), q[i : i + 1].log()) for i in range(2))
    assert float(mean) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)


def independent_logprob(model, prompt_ids, answer_ids) -> float:
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return float(logprobs.gather(1, torch.tensor(answer_ids)[:, None]).sum())


def test_samples_are_scored_like_one_unpadded_sequence_each(tiny_models, tiny_adapters):
    from peft import PeftModel

    model, tokenizer = load_policy(str(tiny_models["sft"]))
    sft_only = drift.sample_and_score(model, tokenizer, PLAN, adapter=False)
    assert sft_only == drift.sample_and_score(model, tokenizer, PLAN, adapter=False)  # seeded: reproducible
    for s in sft_only:
        assert s["logprob"] == s["logprob_sft"]  # version 0 is the SFT model: KL 0
        assert s["logprob"] == pytest.approx(independent_logprob(model, s["prompt_ids"], s["answer_ids"]), abs=1e-3)
    assert drift.summarize(sft_only, 12)["kl_to_sft"] == 0

    plain, _ = load_policy(str(tiny_models["sft"]))
    tuned = PeftModel.from_pretrained(load_policy(str(tiny_models["sft"]))[0], str(tiny_adapters[1]))
    samples = drift.sample_and_score(tuned, tokenizer, PLAN, adapter=True)
    assert any(s["answer_ids"] != t["answer_ids"] for s, t in zip(samples, sft_only))  # the adapter's own samples
    for s in samples:
        assert s["logprob"] == pytest.approx(independent_logprob(tuned, s["prompt_ids"], s["answer_ids"]), abs=1e-3)
        assert s["logprob_sft"] == pytest.approx(independent_logprob(plain, s["prompt_ids"], s["answer_ids"]), abs=1e-3)
        assert 1 <= s["tokens"] <= 12
    assert all(s["kl"] > 0 for s in samples)
    assert drift.summarize(samples, 12)["kl_to_sft"] == pytest.approx(sum(s["kl"] for s in samples) / len(samples))


@pytest.fixture()
def playground(tiny_models, tmp_path):
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    pg = Playground(
        ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path)),
        FAST,
        engine=engine,
    )
    yield pg
    pg.close()


@pytest.mark.slow
def test_each_round_measures_its_version_and_the_idle_trainer_fills_in_the_rest(playground, tiny_models, tmp_path):
    store = playground.store
    add_short_vs_long_votes(store, 6)
    version = run_round(store, playground.data_set.adapters_dir, str(tiny_models["sft"]), FAST)
    plan = drift.plan_of(FAST)
    assert len(plan.prompts) >= 12 and plan.max_new_tokens == 12
    measured = {e["version"]: e["metrics"] for e in store.version_evals()}
    assert set(measured) == {version}, "the round measured its own version, after publishing it"
    assert measured[version]["kl_to_sft"] != 0 and measured[version]["prompts"] == len(plan.prompts)
    assert store.versions_missing_eval(plan.key) == [0]

    assert drift.evaluate_one_missing(store, str(tiny_models["sft"]), plan) == 0  # the SFT baseline, when idle
    assert drift.evaluate_one_missing(store, str(tiny_models["sft"]), plan) is None
    facts = playground.dashboard.facts()
    assert facts["sft_drift"]["kl_to_sft"] == 0
    assert facts["versions"][0]["drift"]["mean_tokens"] == measured[version]["mean_tokens"]
    assert "win_rate" in facts["versions"][0]["drift"]

    cli = [
        sys.executable,
        "-m",
        "playground",
        "-q",
        "--base",
        str(tiny_models["base"]),
        "--sft",
        str(tiny_models["sft"]),
        "--data-dir",
        str(tmp_path),
    ]
    out = subprocess.run(
        [sys.executable, "-m", "playground", "-q", "versions", *cli[4:], "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert listed["sft_drift"]["kl_to_sft"] == 0
    assert listed["versions"][0]["drift"]["distinct_2"] == pytest.approx(measured[version]["distinct_2"])
    # A changed prompt set is measured again, for every version, by `evaluate` as by the idle trainer.
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text('{"prompt": "Name a color."}\n{"prompt": "Say hello."}\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "evaluate",
            *cli[4:],
            "--eval-prompts",
            str(prompts),
            "--eval-tokens",
            "8",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    evaluated = json.loads(out.stdout)["evaluated"]
    assert set(evaluated) == {"0", str(version)} and evaluated["0"]["prompts"] == 2
    assert playground.dashboard.facts()["versions"][0]["drift"]["prompts"] == 2  # the set measured last shows


def test_an_idle_evaluation_gives_way_to_a_round_that_is_due(playground, tiny_models):
    """The idle trainer's evaluation stops at once when a round is due: nothing stored, measured later."""
    store = playground.store
    plan = drift.plan_of(FAST)
    with pytest.raises(drift.EvaluationInterrupted):
        drift.evaluate_one_missing(store, str(tiny_models["sft"]), plan, interrupt=lambda: True)
    assert store.version_evals() == [] and store.versions_missing_eval(plan.key) == [0]
    assert drift.evaluate_one_missing(store, str(tiny_models["sft"]), plan, interrupt=lambda: False) == 0
    assert store.versions_missing_eval(plan.key) == []


def test_a_version_that_cannot_be_measured_says_why_and_is_not_retried(playground, tiny_models, tiny_adapters):
    store = playground.store
    round_id = store.start_round(None, [], {}, None)
    broken = playground.data_set.adapters_dir / "broken"
    broken.mkdir(parents=True)
    (broken / "adapter_config.json").write_text("{not json")
    version = store.finish_round(round_id, str(broken), {})
    plan = drift.plan_of(FAST)
    store.save_version_eval(0, plan.key, {"mean_tokens": 1.0})
    assert drift.evaluate_one_missing(store, str(tiny_models["sft"]), plan) == version
    assert "error" in {e["version"]: e["metrics"] for e in store.version_evals()}[version]
    assert drift.evaluate_one_missing(store, str(tiny_models["sft"]), plan) is None
