"""The leaderboard: Bradley-Terry strengths of the base model, the SFT model and each preference-tuned version,
fitted to the stored votes, with bootstrap confidence intervals.

Pure functions over `Store.export_votes()` rows; no database, no Gradio.

Players: "base", "sft" and "pref vN" for every adapter version N >= 1. The preference arm at version 0 *is* the
SFT model (no adapter), so its answers count for the player "sft"; a comparison of the SFT arm with the
preference arm at v0 is a model against itself and is left out, as is any pair of answers by the same player
(e.g. a duel: two samples of one version).

What counts, as pairwise outcomes:
- best-of-three, winner only: the winner beats each other answer;
- best-of-three, full ranking: every implied pair (each answer beats every answer ranked below it);
- pairwise (duel or A/B): 'a' or 'b' is one win; 'tie' is half a win each way;
- 'both_bad', 'all_bad' and thumbs say nothing about which answer is better: left out.

Ratings are on the Elo scale (400 points = 10:1 odds of winning), centred so the players' mean is 1000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

PRIOR_GAMES = 1.0  # tied pseudo-games per pair of players: keeps an unbeaten player's strength finite
BOOTSTRAP_SAMPLES = 200
ELO_SCALE = 400 / math.log(10)
CENTRE = 1000.0


@dataclass(frozen=True)
class Outcome:
    """One pairwise result. `score` is what `first` earned: 1 a win, 0.5 a tie."""

    vote: int  # index of the vote it came from: the bootstrap resamples whole votes
    first: str
    second: str
    score: float


@dataclass(frozen=True)
class Standing:
    player: str
    rating: float
    ci_low: float
    ci_high: float
    comparisons: int
    wins: float  # ties count half

    @property
    def win_rate(self) -> float:
        return self.wins / self.comparisons if self.comparisons else 0.0


def player(arm: str, adapter_version: int | None) -> str:
    if arm == "pref" and adapter_version:
        return f"pref v{adapter_version}"
    return "base" if arm == "base" else "sft"


def _player_order(name: str) -> tuple[int, int]:
    if name.startswith("pref v"):
        return 2, int(name.removeprefix("pref v"))
    return (0, 0) if name == "base" else (1, 0)


def outcomes_from_votes(votes: Iterable[Mapping]) -> list[Outcome]:
    """Pairwise outcomes implied by exported votes (see the module docstring for the rules)."""
    outcomes: list[Outcome] = []
    for index, vote in enumerate(votes):
        for first, second, score in _vote_outcomes(vote):
            a, b = player(first["arm"], first["adapter_version"]), player(second["arm"], second["adapter_version"])
            if a != b:
                outcomes.append(Outcome(index, a, b, score))
    return outcomes


def _vote_outcomes(vote: Mapping) -> list[tuple[Mapping, Mapping, float]]:
    answers = vote["answers"]
    named = sorted((a for a in answers if a["position"] is not None), key=lambda a: a["position"])
    if vote["kind"] == "best" and len(named) == 1:
        return [(named[0], other, 1.0) for other in answers if other["position"] is None]
    if vote["kind"] == "best":
        return [(named[i], named[j], 1.0) for i in range(len(named)) for j in range(i + 1, len(named))]
    if vote["kind"] == "pairwise" and len(named) == 2:
        a, b = named
        return {"a": [(a, b, 1.0)], "b": [(b, a, 1.0)], "tie": [(a, b, 0.5)]}.get(vote["outcome"], [])
    return []


def fit(n_players: int, first: np.ndarray, second: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None,
        prior: float = PRIOR_GAMES, tol: float = 1e-9, max_iter: int = 10_000) -> np.ndarray:
    """Bradley-Terry log-strengths, centred on their mean, by Hunter's MM iteration.

    Every pair of players also gets `prior` pseudo-games that end in a tie: a weak pull to the middle that makes
    the fit exist when a player has only wins or only losses (or two players never met), and keeps tiny samples
    calm. (With prior=0 every player needs a win and a loss, or the maximum does not exist.) The likelihood does
    not change when all strengths are scaled alike, so each step re-centres them.
    """
    weight = np.ones(len(score)) if weight is None else weight
    wins = np.full((n_players, n_players), prior / 2)
    np.fill_diagonal(wins, 0.0)
    np.add.at(wins, (first, second), score * weight)
    np.add.at(wins, (second, first), (1 - score) * weight)
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    theta = np.zeros(n_players)
    for _ in range(max_iter):
        strength = np.exp(theta)
        denominator = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = np.log(total_wins) - np.log(denominator)
        updated -= updated.mean()
        change = np.max(np.abs(updated - theta))
        theta = updated
        if change < tol:
            break
    return theta


def leaderboard(votes: Iterable[Mapping], *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                prior: float = PRIOR_GAMES) -> list[Standing]:
    """Standings, best first. CIs: 2.5th-97.5th percentiles over `bootstrap` resamples of the votes."""
    outcomes = outcomes_from_votes(votes)
    return standings(outcomes, bootstrap=bootstrap, seed=seed, prior=prior)


def standings(outcomes: Sequence[Outcome], *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0,
              prior: float = PRIOR_GAMES) -> list[Standing]:
    if not outcomes:
        return []
    players = sorted({o.first for o in outcomes} | {o.second for o in outcomes}, key=_player_order)
    index = {name: i for i, name in enumerate(players)}
    first = np.array([index[o.first] for o in outcomes])
    second = np.array([index[o.second] for o in outcomes])
    score = np.array([o.score for o in outcomes], dtype=float)
    vote = np.unique([o.vote for o in outcomes], return_inverse=True)[1]

    point = fit(len(players), first, second, score, prior=prior)
    samples = _bootstrap(len(players), first, second, score, vote, bootstrap, seed, prior)
    low, high = (np.percentile(samples, [2.5, 97.5], axis=0) if len(samples) else (point, point))

    comparisons = np.bincount(first, minlength=len(players)) + np.bincount(second, minlength=len(players))
    wins = np.bincount(first, score, len(players)) + np.bincount(second, 1 - score, len(players))
    rows = [
        Standing(name, _elo(point[i]), _elo(low[i]), _elo(high[i]), int(comparisons[i]), float(wins[i]))
        for i, name in enumerate(players)
    ]
    return sorted(rows, key=lambda s: (-s.rating, _player_order(s.player)))


def _bootstrap(n_players, first, second, score, vote, samples, seed, prior) -> np.ndarray:
    # Resample votes, not outcomes: the pairs one ranking implies are not independent of each other.
    rng = np.random.default_rng(seed)
    n_votes = int(vote.max()) + 1
    fits = []
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, n_votes, n_votes), minlength=n_votes)
        fits.append(fit(n_players, first, second, score, counts[vote].astype(float), prior=prior))
    return np.array(fits)


def _elo(theta: float) -> float:
    return CENTRE + ELO_SCALE * float(theta)


TABLE_HEADERS = ["rank", "player", "rating", "95% CI", "comparisons", "win rate"]


def table(rows: Sequence[Standing]) -> list[list]:
    """Rows for a UI table (see TABLE_HEADERS)."""
    return [
        [rank, s.player, round(s.rating), f"{s.ci_low:.0f} – {s.ci_high:.0f}", s.comparisons, f"{s.win_rate:.0%}"]
        for rank, s in enumerate(rows, 1)
    ]
