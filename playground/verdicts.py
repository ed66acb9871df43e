"""What an oracle's verdicts on held-out answers say, with their noise: the preference-tuned model's answer against
the SFT model's answer to the same prompt and seed, over K seeds per prompt.

- win_rate: wins, ties counted ½, over every comparison;
- ties: the share of comparisons the oracle cannot decide (for `shorter`: the same length, which in practice means
  the same text; for a word oracle: the same count of the word, most often none in either answer). The two answers
  share their seed, so where the adapter changed nothing that matters the two texts are the same: a tie says the
  version did not move that answer, and a win rate with many ties sits near ½ whatever the decided ones say;
- win_rate_decided: wins among the comparisons that were decided (None when none was);
- win_rate_se: the standard error of win_rate, from the spread of the per-prompt means (a prompt's K answers are not
  independent of each other, so the prompts are the unit); win_rate_decided_se: binomial, over the decided ones.
"""

from __future__ import annotations

import math
import statistics

SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5}  # "a": the preference-tuned answer won


def summarize(outcomes: list[str], prompts: list[int]) -> dict:
    """The figures above from `outcomes` ("a", "b" or "tie", one per comparison) and the held-out prompt each
    comparison was on (`prompts`, parallel to it)."""
    if not outcomes:
        raise ValueError("no comparisons to summarize")
    by_prompt: dict[int, list[float]] = {}
    for outcome, prompt in zip(outcomes, prompts, strict=True):
        by_prompt.setdefault(prompt, []).append(SCORE[outcome])
    means = [sum(scores) / len(scores) for scores in by_prompt.values()]
    wins, ties = outcomes.count("a"), outcomes.count("tie")
    decided = len(outcomes) - ties
    rate_decided = wins / decided if decided else None
    return {
        "win_rate": sum(SCORE[o] for o in outcomes) / len(outcomes),
        "win_rate_se": statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else None,
        "ties": ties / len(outcomes),
        "win_rate_decided": rate_decided,
        "win_rate_decided_se": (
            math.sqrt(rate_decided * (1 - rate_decided) / decided) if rate_decided is not None else None
        ),
        "comparisons": len(outcomes),
        "decided": decided,
    }
