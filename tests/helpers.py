"""Test helpers that fill a store with realistic votes without running models."""

from __future__ import annotations

from playground.store import Store


def add_compare(store: Store, prompt: str, texts: dict[str, str], session="s1", version=0) -> tuple[int, dict]:
    answers = [{"arm": arm, "text": text, "model": f"tiny-{arm}", "adapter_version": version if arm == "pref" else 0,
                "settings": {"temperature": 0.7}, "seed": 1, "prompt_tokens": 5, "new_tokens": len(text.split()),
                "seconds": 0.1} for arm, text in texts.items()]
    comparison, ids = store.add_comparison(prompt, session, answers=answers)
    return comparison, dict(zip(texts, ids))


def add_short_vs_long_votes(store: Store, n: int, session="sim") -> int:
    """n pairwise votes preferring a short answer over a long one; returns the pairs created."""
    created = 0
    for i in range(n):
        prompt = f"Question number {i}: tell me about topic {i}."
        comparison, (a, b) = store.add_comparison(prompt, session, mode="duel", answers=[
            {"arm": "pref", "text": f"Short answer {i}.", "model": "tiny", "seed": i, "new_tokens": 3},
            {"arm": "pref", "text": f"A much longer answer about topic {i}, " * 3, "model": "tiny", "seed": i + 1,
             "new_tokens": 30}])
        created += store.vote_pairwise(session, comparison, a, b, "a").pairs_created
    return created
