"""Fixed preference pairs for the training benchmarks: 16 prompts from assets/prompts.jsonl, a short chosen
answer and a long rejected one, the same on every run (their lengths: docs/performance.md)."""

from __future__ import annotations

from playground.prompting import load_prompts
from playground.store import Store

FILLER = (
    "It depends on several factors that are worth looking at one by one, and each of them deserves a "
    "careful explanation before we can reach a conclusion about the question. "
)


def fixed_pairs(n: int = 16) -> list[tuple[str, str, str]]:
    prompts = [row["prompt"] for row in load_prompts()][:n]
    return [
        (
            p,
            f"Here is a short, direct answer to '{p}' in two sentences. It covers the main point clearly.",
            f"Let me answer '{p}' at length. " + FILLER * 4,
        )
        for p in prompts
    ]


def fill_store(store: Store, n: int = 16, session: str = "bench") -> None:
    for i, (prompt, chosen, rejected) in enumerate(fixed_pairs(n)):
        comparison, ids = store.add_comparison(
            prompt,
            session,
            mode="duel",
            answers=[{"arm": "pref", "text": text, "model": "bench", "seed": i} for text in (chosen, rejected)],
        )
        store.vote_pairwise(session, comparison, ids[0], ids[1], "a")
