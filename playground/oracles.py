"""The simulated voter's judges: rules that prefer one answer to another (`simulate --oracle`), the better answer
each would write itself (`--corrections`), and single ratings against the median (`--ratings`).

Oracles: `shorter` (prefers the shorter answer), `plain` (prefers the answer a layperson reads more easily: Flesch
reading ease by textstat, ties within PLAIN_MARGIN points), `no-word:WORD` (prefers answers without WORD),
`contains:WORD` (prefers answers with WORD). Equal scores are a tie (no DPO pair).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Oracle:
    kind: str
    word: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Oracle:
        kind, _, word = spec.partition(":")
        if kind == "shorter" and not word:
            return cls("shorter")
        if kind == "plain" and not word:
            return cls("plain")
        if kind in ("no-word", "contains") and word.strip():
            return cls(kind, word.strip().lower())
        raise UserError(f"Unknown oracle '{spec}': use shorter, plain, no-word:WORD or contains:WORD.")

    def score(self, text: str) -> float:
        """Higher is better."""
        if self.kind == "shorter":
            return -len(text.strip())
        if self.kind == "plain":
            return plainness(text)
        hits = len(re.findall(rf"\b{re.escape(self.word)}\b", text.lower()))
        return -hits if self.kind == "no-word" else hits

    @property
    def spec(self) -> str:
        """The oracle as `--oracle` spells it."""
        return f"{self.kind}:{self.word}" if self.word else self.kind

    def compare(self, a: str, b: str) -> str:
        sa, sb = self.score(a), self.score(b)
        margin = PLAIN_MARGIN if self.kind == "plain" else 0
        return "tie" if abs(sa - sb) <= margin else ("a" if sa > sb else "b")

    def rank(self, texts: dict[str, str]) -> list[str]:
        """Keys best first (equal scores keep their order; identical texts then give no pair)."""
        return sorted(texts, key=lambda key: -self.score(texts[key]))

    def improve(self, text: str) -> str:
        """The better answer this oracle would write from `text`: `shorter`, its first sentence; `contains:W`, the
        text with W added; `no-word:W`, the text with every W removed ("" when nothing is left)."""
        text = text.strip()
        if self.kind == "shorter":
            return re.split(r"(?<=[.!?])\s+", text, maxsplit=1)[0].strip()
        if self.kind == "plain":
            return " ".join(re.split(r"(?<=[.!?])\s+", text, maxsplit=2)[:2]).strip()
        if self.kind == "contains":
            return f"{text} {self.word}".strip()
        without = re.sub(rf"\b{re.escape(self.word)}\b", "", text, flags=re.IGNORECASE)
        return re.sub(r"[ \t]{2,}", " ", without).strip()


# `plain`: two answers whose Flesch reading ease differs by this much or less read the same to a layperson (a tie).
PLAIN_MARGIN = 5.0


def plainness(text: str) -> float:
    """How easily a layperson reads `text`: its Flesch reading ease (textstat; higher is plainer: short sentences of
    short words). An empty answer reads as nothing at all: the lowest score."""
    if not re.search(r"\w", text):
        return -1000.0
    import textstat

    return float(textstat.flesch_reading_ease(text))


class Rater:
    """Single ratings by an oracle: 👍 for an answer scoring above the median of every answer it has scored so far
    (this one included), 👎 below, None (no rating) at the median."""

    def __init__(self, oracle: Oracle):
        self.oracle, self.scores = oracle, []

    def rate(self, text: str) -> bool | None:
        score = self.oracle.score(text)
        self.scores.append(score)
        median = statistics.median(self.scores)
        return None if score == median else score > median
