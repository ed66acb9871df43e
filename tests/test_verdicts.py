"""The held-out verdicts' figures: ties beside the win rate, the decided win rate, and standard errors with the
prompt as the unit."""

import math

import pytest

from playground.verdicts import summarize


def test_ties_pull_the_win_rate_to_one_half_and_the_decided_rate_says_what_the_rest_did():
    # 4 prompts x 2 samples: 2 wins, 0 losses, 6 ties.
    outcomes = ["a", "tie", "tie", "tie", "a", "tie", "tie", "tie"]
    figures = summarize(outcomes, [0, 1, 2, 3, 0, 1, 2, 3])
    assert figures["win_rate"] == pytest.approx((2 + 3) / 8)
    assert figures["ties"] == 0.75 and figures["decided"] == 2 and figures["comparisons"] == 8
    assert figures["win_rate_decided"] == 1.0 and figures["win_rate_decided_se"] == 0.0
    # Per-prompt means 1, .5, .5, .5: their standard deviation / sqrt(4 prompts).
    assert figures["win_rate_se"] == pytest.approx(0.25 / math.sqrt(4))


def test_nothing_decided_has_no_decided_rate_and_one_prompt_no_standard_error():
    figures = summarize(["tie", "tie"], [0, 0])
    assert figures["win_rate"] == 0.5 and figures["ties"] == 1.0
    assert figures["win_rate_decided"] is None and figures["win_rate_decided_se"] is None
    assert figures["win_rate_se"] is None


def test_the_standard_error_counts_prompts_not_samples():
    """Two samples of a prompt that always agree add no information: the same SE as one sample each."""
    one = summarize(["a", "b", "a", "b"], [0, 1, 2, 3])
    two = summarize(["a", "b", "a", "b"] * 2, [0, 1, 2, 3] * 2)
    assert one["win_rate_se"] == pytest.approx(two["win_rate_se"])
    assert one["win_rate_decided_se"] > two["win_rate_decided_se"], "the binomial SE of decided ones counts samples"


def test_outcomes_and_prompts_must_pair_up():
    with pytest.raises(ValueError):
        summarize(["a", "b"], [0])
    with pytest.raises(ValueError):
        summarize([], [])
