"""Why this answer: DPO's implicit reward per token (explain.py), checked against log-probabilities computed here
independently, on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import add_compare

from playground.core import Playground
from playground.explain import Explanation, summary
from playground.generation import Engine
from playground.models import load_model
from playground.settings import ModelSettings, Sampling
from playground.store import StoreError

ANSWER = "Paris is the capital of France."


@pytest.fixture()
def playground(tiny_models, tmp_path):
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    pg = Playground(
        ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path)), engine=engine
    )
    yield pg
    pg.close()


def publish(store, adapter, beta=0.25) -> int:
    """A finished round with `adapter` as its version, trained (so it says) with `beta`."""
    round_id = store.start_round(store.serving_version(), [], {"beta": beta}, None)
    return store.finish_round(round_id, str(adapter), {})


def independent_logprob_sum(sft_dir, adapter, messages, answer) -> float:
    """Σ log π(answer tokens) by plain transformers + peft, the answer's tokens found by hand."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    model = AutoModelForCausalLM.from_pretrained(sft_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    assert full.startswith(prompt)
    ids = tokenizer(full, add_special_tokens=False, return_tensors="pt").input_ids
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    return float(logprobs.gather(1, ids[0, start:, None]).sum())


def test_implicit_reward_is_zero_at_version_0(playground):
    comparison, _ = add_compare(
        playground.store, "What is the capital of France?", {"base": "A city.", "sft": ANSWER, "pref": ANSWER}
    )
    for arm in ("base", "sft", "pref"):
        result = playground.explain(comparison, arm)
        assert result.version == 0
        assert result.total_reward == 0.0
        assert result.tokens and all(t["reward"] == 0.0 for t in result.tokens)
        assert all(shade is None for _, shade in result.highlighted())
    assert "nothing was learned yet" in summary(result)


def test_implicit_reward_is_beta_times_the_log_probability_change(playground, tiny_models, tiny_adapters):
    history = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"}]
    prompt = "What is the capital of France?"
    comparison, _ = playground.store.add_comparison(
        prompt,
        "s1",
        answers=[
            {"arm": arm, "text": ANSWER if arm != "base" else "A city.", "model": "tiny"}
            for arm in ("base", "sft", "pref")
        ],
        history=history,
    )
    version = publish(playground.store, tiny_adapters[1], beta=0.25)
    playground.sync_adapter()
    assert playground.engine.adapter_version == version

    result = playground.explain(comparison, "sft")
    messages = [*history, {"role": "user", "content": prompt}]
    with_adapter = independent_logprob_sum(tiny_models["sft"], tiny_adapters[1], messages, ANSWER)
    without = independent_logprob_sum(tiny_models["sft"], None, messages, ANSWER)
    assert result.beta == 0.25  # the β the version was trained with
    assert result.total_reward == pytest.approx(0.25 * (with_adapter - without), rel=1e-4, abs=1e-4)
    assert result.total_reward != 0
    assert sum(t["reward"] for t in result.tokens) == pytest.approx(result.total_reward, abs=1e-4)
    # The tokens are the answer as the chat template writes it, end of turn included (what trl trains on).
    assert "".join(t["text"] for t in result.tokens).startswith(ANSWER)
    assert "<|im_end|>" in result.tokens[-2]["text"] + result.tokens[-1]["text"]
    # The top lists are signed and ordered.
    assert [t["reward"] for t in result.top_up] == sorted((t["reward"] for t in result.top_up), reverse=True)
    assert all(t["reward"] > 0 for t in result.top_up) and all(t["reward"] < 0 for t in result.top_down)
    assert "Implicit reward" in summary(result)


def test_another_version_is_scored_without_touching_what_serves(playground, tiny_models, tiny_adapters):
    comparison, _ = add_compare(playground.store, "Tell me about topic 3.", {"sft": ANSWER, "pref": ANSWER})
    first = publish(playground.store, tiny_adapters[1])
    second = publish(playground.store, tiny_adapters[2])
    playground.sync_adapter()
    assert playground.engine.adapter_version == second
    greedy = Sampling(temperature=0, max_new_tokens=6, seed=0)
    before = playground.engine.generate("Tell me about topic 3.", greedy)

    under_first = playground.explain(comparison, "pref", version=first)
    messages = [{"role": "user", "content": "Tell me about topic 3."}]
    expected = 0.25 * (
        independent_logprob_sum(tiny_models["sft"], tiny_adapters[1], messages, ANSWER)
        - independent_logprob_sum(tiny_models["sft"], None, messages, ANSWER)
    )
    assert under_first.version == first
    assert under_first.total_reward == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert under_first.total_reward != pytest.approx(playground.explain(comparison, "pref").total_reward)
    after = playground.engine.generate("Tell me about topic 3.", greedy)
    assert {k: a.text for k, a in after.items()} == {k: a.text for k, a in before.items()}
    assert playground.engine.runtimes["sft"].peft.peft_config.keys() == {
        f"v{second}"
    }  # the scoring adapter is gone again


def test_bad_requests_get_a_clear_message(playground):
    comparison, (a, b) = playground.store.add_comparison(
        "Q?",
        "s1",
        mode="duel",
        answers=[{"arm": "pref", "text": "One.", "model": "tiny"}, {"arm": "pref", "text": "Two.", "model": "tiny"}],
    )
    assert playground.explain(comparison, "b").answer_id == b
    with pytest.raises(StoreError, match="name one, a or b"):
        playground.explain(comparison, "pref")
    with pytest.raises(StoreError, match="has no base answer"):
        playground.explain(comparison, "base")
    with pytest.raises(StoreError, match="Comparison 999 does not exist"):
        playground.explain(999, "sft")
    with pytest.raises(StoreError, match="version 7 does not exist"):
        playground.explain(comparison, "a", version=7)


@pytest.mark.slow
def test_explain_cli_json(playground, tiny_models, tiny_adapters, tmp_path):
    comparison, _ = add_compare(playground.store, "What is the capital of France?", {"sft": ANSWER, "pref": ANSWER})
    publish(playground.store, tiny_adapters[1])
    expected = playground.explain(comparison, "sft")
    cli = [
        sys.executable,
        "-m",
        "playground",
        "-q",
        "explain",
        "--base",
        str(tiny_models["base"]),
        "--sft",
        str(tiny_models["sft"]),
        "--data-dir",
        str(tmp_path),
        "--comparison",
        str(comparison),
    ]
    out = subprocess.run([*cli, "--arm", "sft", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert set(got) >= {"comparison", "arm", "version", "beta", "total_reward", "tokens", "top_up", "top_down"}
    assert got["total_reward"] == pytest.approx(expected.total_reward, abs=1e-4)
    assert [t["text"] for t in got["tokens"]] == [t["text"] for t in expected.tokens]
    refused = subprocess.run([*cli, "--arm", "base"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "has no base answer" in refused.stderr


def test_token_texts_keep_characters_split_over_byte_tokens(playground):
    comparison, _ = add_compare(playground.store, "Say something nice.", {"sft": "Très bien 🙂 ça va"})
    result = playground.explain(comparison, "sft")
    assert isinstance(result, Explanation)
    assert "".join(t["text"] for t in result.tokens).startswith("Très bien 🙂 ça va")
    assert not any("\ufffd" in t["text"] for t in result.tokens)


def test_scoring_a_version_while_version_0_serves_leaves_the_sft_model_plain(playground, tiny_adapters):
    comparison, _ = add_compare(playground.store, "Tell me about topic 3.", {"sft": ANSWER, "pref": ANSWER})
    version = publish(playground.store, tiny_adapters[1])
    playground.rollback(0)
    playground.sync_adapter()
    greedy = Sampling(temperature=0, max_new_tokens=6, seed=0)
    before = {k: a.text for k, a in playground.engine.generate("Tell me about topic 3.", greedy).items()}
    for _ in range(2):  # twice: the second call must not trip over the first one's dropped adapter
        assert playground.explain(comparison, "sft", version=version).total_reward != 0
    assert playground.explain(comparison, "sft").total_reward == 0
    after = {k: a.text for k, a in playground.engine.generate("Tell me about topic 3.", greedy).items()}
    assert after == before
