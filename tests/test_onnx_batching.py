"""How the onnx decode worker groups rows into generators and draws sampled tokens (no model needed)."""

from __future__ import annotations

import numpy as np

from playground.runtimes.onnx.sampling import draw, forced
from playground.runtimes.onnx.worker import batches


def test_the_sft_row_joins_the_preference_row_on_a_gated_graph():
    assert batches([(1, None), (1, "v3")], gated=True) == [("v3", [0, 1])]
    # a duel of two preference rows and an SFT row: one generator
    assert batches([(1, None), (1, "v3"), (2, "v3")], gated=True) == [("v3", [0, 1, 2])]


def test_without_the_gate_or_with_two_adapters_rows_split():
    assert batches([(1, None), (1, "v3")], gated=False) == [(None, [0]), ("v3", [1])]
    # one generator runs one adapter: the SFT row joins the first, the other adapter decodes apart
    assert batches([(1, "v2"), (1, None), (1, "v3")], gated=True) == [("v2", [0, 1]), ("v3", [2])]
    assert batches([(1, None), (2, None)], gated=True) == [(None, [0, 1])]


def test_draw_is_reproducible_per_seed_and_keeps_to_top_p():
    logits = np.log(np.asarray([0.6, 0.25, 0.1, 0.05], dtype=np.float32))
    first = [draw(logits, np.random.default_rng(7), 1.0, 1.0) for _ in range(3)]
    assert len(set(first)) == 1  # the same seed, the same token
    rng = np.random.default_rng(0)
    assert {draw(logits, rng, 1.0, 0.5) for _ in range(200)} == {0}  # 0.6 alone reaches 0.5
    assert {draw(logits, rng, 1.0, 0.8) for _ in range(400)} == {0, 1}  # 0.6 + 0.25 reach 0.8
    counts = np.bincount([draw(logits, rng, 1.0, 1.0) for _ in range(4000)], minlength=4) / 4000
    assert np.allclose(counts, [0.6, 0.25, 0.1, 0.05], atol=0.03)
    assert {draw(logits, rng, 0.01, 1.0) for _ in range(100)} == {0}  # a low temperature is nearly greedy


def test_draw_over_a_large_vocabulary_sorts_only_what_top_p_needs():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=50_000).astype(np.float32)
    logits[123] = 20.0  # nearly all the mass
    assert draw(logits, np.random.default_rng(2), 1.0, 0.9) == 123
    flat = np.zeros(50_000, dtype=np.float32)  # the likeliest 1024 hold too little: every token is sorted
    picks = {draw(flat, rng, 1.0, 0.99) for _ in range(50)}
    assert len(picks) > 40


def test_forced_logits_make_a_greedy_step_take_each_rows_token():
    logits = np.zeros((2, 1, 10), dtype=np.float32)
    out = forced(logits, [3, 7])
    assert out.shape == logits.shape and out.dtype == np.float32
    assert out[:, -1].argmax(-1).tolist() == [3, 7]
