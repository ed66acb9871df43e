"""Sampling in the decode worker, one seeded numpy generator per row.

ONNX Runtime GenAI samples a generator's rows from one random stream, seeded once per generator. Drawing each
row's token here instead (the generator then takes it greedily) keeps an answer a function of its prompt, seed
and adapter alone, whether it decodes alone or in a batch beside other rows; rows that share a seed share their
noise, as on the torch runtime (decoding.SeededSampler), so an SFT and a preference answer differ by the adapter.
"""

from __future__ import annotations

import numpy as np

CANDIDATES = 1024  # top-p sorts only the likeliest tokens, unless they hold less than top_p of the mass


def draw(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_p: float) -> int:
    """One token from a row's logits: softmax at `temperature`, then the smallest set of likeliest tokens whose
    mass reaches `top_p` (top_p 1: all of them)."""
    scaled = logits.astype(np.float64) / max(temperature, 1e-6)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1:
        order = np.argpartition(-probs, CANDIDATES)[:CANDIDATES] if probs.size > CANDIDATES else np.arange(probs.size)
        if probs[order].sum() < top_p:
            order = np.arange(probs.size)
        order = order[np.argsort(-probs[order], kind="stable")]
        mass = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(mass, top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[min(int(np.searchsorted(np.cumsum(kept), rng.random())), keep.size - 1)])
    return int(min(int(np.searchsorted(np.cumsum(probs), rng.random())), probs.size - 1))


def forced(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Logits (rows × 1 × vocabulary, as the generator gives them) that make a greedy step take `tokens`, one per
    row: 0 there, the lowest float elsewhere."""
    out = np.full(logits.shape, np.finfo(np.float32).min, dtype=np.float32)
    out[np.arange(len(tokens)), -1, np.asarray(tokens)] = 0
    return out
