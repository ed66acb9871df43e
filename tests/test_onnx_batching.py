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


# One step's probabilities, the likeliest tokens not first: top-p 0.6 keeps tokens 1, 3 and 4 (0.3 + 0.25 + 0.15),
# and the 0.3 left outside would be drawn about a third of the time by a draw that ignored top-p.
PROBS = np.asarray([0.02, 0.3, 0.03, 0.25, 0.15, 0.1, 0.1, 0.05])
NUCLEUS = {1, 3, 4}


class FakeParams:
    def __init__(self, model):
        self.batch_size = 1

    def set_search_options(self, **options):
        self.batch_size = options.get("batch_size", 1)


class FakeGenerator:
    """ONNX Runtime GenAI's generator as the worker uses it: the same logits for every row and step, and a greedy
    step that takes each row's likeliest forced token."""

    def __init__(self, model, params):
        self.rows, self.tokens = params.batch_size, None

    def set_active_adapter(self, adapters, name):
        pass

    def set_model_input(self, name, value):
        pass

    def append_tokens(self, ids):
        assert len(ids) == self.rows

    def is_done(self):
        return False

    def get_logits(self):
        return np.tile(np.log(PROBS).astype(np.float32), (self.rows, 1, 1))

    def set_logits(self, logits):
        self.tokens = logits[:, -1].argmax(-1)

    def generate_next_token(self):
        pass

    def get_next_tokens(self):
        return self.tokens


class Parent:
    """The parent's end of the pipe: takes each step's tokens and lets every row go on."""

    def __init__(self):
        self.steps = []

    def send(self, message):
        assert message[0] == "ok", message
        if message[1] is not None:
            self.steps.append(message[1])

    def recv(self):
        return ("ok", [])


def decode(rows, *, top_p=1.0, row_scale=None, steps=40) -> list[list[int]]:
    """Each row's tokens, sampled by the worker's own loop (its per-row streams and `draw`) on fake logits."""
    from types import SimpleNamespace

    from playground.runtimes.onnx.worker import _generate

    og = SimpleNamespace(GeneratorParams=FakeParams, Generator=FakeGenerator)
    parent = Parent()
    _generate(parent, None, None, 4096, row_scale, [1, 2, 3], rows, 1.0, top_p, False, steps, np=np, og=og)
    assert len(parent.steps) == steps
    return [list(tokens) for tokens in zip(*parent.steps)]


def test_each_row_draws_from_its_own_seed_alone_or_in_a_batch():
    alone = decode([(7, None)])[0]
    assert decode([(7, None)])[0] == alone, "the same seed, another request: the same answer"
    assert len(set(alone)) > 3, "sampled, not greedy"
    # Three generators (no gate: one per adapter), the seed-7 rows second and third in the request: each still
    # draws from its own seed's stream, so its tokens are those it decodes alone; rows sharing a seed share noise.
    split = decode([(3, "v1"), (7, None), (7, "v2")])
    assert split[1] == split[2] == alone
    assert split[0] != alone, "another seed, other tokens"
    # One gated generator holding all the rows: the same.
    assert decode([(3, "v1"), (7, None), (7, "v1")], row_scale="scale") == split


def test_draw_keeps_to_the_top_p_nucleus():
    rows = [(seed, None) for seed in range(8)]
    drawn = np.concatenate(decode(rows, top_p=0.6))
    assert set(drawn) == NUCLEUS, "every nucleus token is drawn, none outside it"
    # ... each as often as its share of the nucleus's mass
    share = np.bincount(drawn, minlength=8)[sorted(NUCLEUS)] / drawn.size
    assert np.allclose(share, PROBS[sorted(NUCLEUS)] / PROBS[sorted(NUCLEUS)].sum(), atol=0.08), share
    assert set(np.concatenate(decode(rows))) > NUCLEUS, "top_p 1 keeps every token"
    rng = np.random.default_rng(0)
    sampled = np.bincount([draw(np.log(PROBS), rng, 1.0, 1.0) for _ in range(4000)], minlength=8) / 4000
    assert np.allclose(sampled, PROBS, atol=0.03)
    assert {draw(np.log(PROBS), rng, 0.01, 1.0) for _ in range(100)} == {1}, "a low temperature is nearly greedy"


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
