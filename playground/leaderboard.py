"""The leaderboard: Bradley-Terry strengths of the base model, the SFT model and each preference-tuned version,
fitted to the stored votes, with bootstrap confidence intervals; and each player's win rate.

Pure functions over `Store.export_votes()` rows; no database, no Gradio. What a vote means (which answer beat
which, ties, identical texts) is `votes.outcomes_of`: the training pairs come from the same outcomes.

Players: "base", "sft" and "pref vN" for every adapter version N >= 1. The preference arm at version 0 *is* the
SFT model (no adapter), so its answers count for the player "sft"; an outcome between two answers of the same
player (the SFT arm against the preference arm at v0, two samples of one version in a duel) is left out: a model
does not play itself. A person's correction beating the models' answers trains them but is not a game: people are
not players. Ratings are on the Elo scale (400 points = 10:1 odds of winning), centred so the players'
mean is 1000.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .votes import outcomes_of

PRIOR_GAMES = 1.0  # tied pseudo-games per pair of players: keeps an unbeaten player's strength finite
BOOTSTRAP_SAMPLES = 200
ELO_SCALE = 400 / math.log(10)
CENTRE = 1000.0


@dataclass(frozen=True)
class Game:
    """One game between two players, from one vote. `score` is what `first` earned: 1 a win, 0.5 a tie."""

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


def games_from_votes(votes: Iterable[Mapping]) -> list[Game]:
    """Games between players implied by exported votes (same-player outcomes left out)."""
    games: list[Game] = []
    for index, vote in enumerate(votes):
        for o in outcomes_of(vote):
            if "human" in (o.first["arm"], o.second["arm"]):  # a person's correction trains, but is not a model
                continue
            a = player(o.first["arm"], o.first["adapter_version"])
            b = player(o.second["arm"], o.second["adapter_version"])
            if a != b:
                games.append(Game(index, a, b, o.score))
    return games


def fit(
    n_players: int,
    first: np.ndarray,
    second: np.ndarray,
    score: np.ndarray,
    weight: np.ndarray | None = None,
    prior: float = PRIOR_GAMES,
    tol: float = 1e-9,
    max_iter: int = 10_000,
) -> np.ndarray:
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


def leaderboard(
    votes: Iterable[Mapping], *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0, prior: float = PRIOR_GAMES
) -> list[Standing]:
    """Standings, best first. CIs: 2.5th-97.5th percentiles over `bootstrap` resamples of the votes."""
    return standings(games_from_votes(votes), bootstrap=bootstrap, seed=seed, prior=prior)


def standings(
    games: Sequence[Game], *, bootstrap: int = BOOTSTRAP_SAMPLES, seed: int = 0, prior: float = PRIOR_GAMES
) -> list[Standing]:
    if not games:
        return []
    players = sorted({g.first for g in games} | {g.second for g in games}, key=_player_order)
    index = {name: i for i, name in enumerate(players)}
    first = np.array([index[g.first] for g in games])
    second = np.array([index[g.second] for g in games])
    score = np.array([g.score for g in games], dtype=float)
    vote = np.unique([g.vote for g in games], return_inverse=True)[1]

    point = fit(len(players), first, second, score, prior=prior)
    samples = _bootstrap(len(players), first, second, score, vote, bootstrap, seed, prior)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0) if len(samples) else (point, point)

    comparisons = np.bincount(first, minlength=len(players)) + np.bincount(second, minlength=len(players))
    wins = np.bincount(first, score, len(players)) + np.bincount(second, 1 - score, len(players))
    rows = [
        Standing(name, _elo(point[i]), _elo(low[i]), _elo(high[i]), int(comparisons[i]), float(wins[i]))
        for i, name in enumerate(players)
    ]
    return sorted(rows, key=lambda s: (-s.rating, _player_order(s.player)))


def _bootstrap(n_players, first, second, score, vote, samples, seed, prior) -> np.ndarray:
    # Resample votes, not games: the games one ranking implies are not independent of each other.
    rng = np.random.default_rng(seed)
    n_votes = int(vote.max()) + 1
    fits = []
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, n_votes, n_votes), minlength=n_votes)
        fits.append(fit(n_players, first, second, score, counts[vote].astype(float), prior=prior))
    return np.array(fits)


def _elo(theta: float) -> float:
    return CENTRE + ELO_SCALE * float(theta)


TABLE_HEADERS = ["rank", "player", "rating", "95% CI", "comparisons", "win rate", "mean reward-model score"]


def table(rows: Sequence[Standing], mean_rewards: Mapping[str, Mapping] | None = None) -> list[list]:
    """Rows for a UI table (see TABLE_HEADERS); mean_rewards: {player: {"mean_reward", "answers"}} by one reward
    model (Store.mean_rewards_by_player), "–" for a player it did not score."""
    scored = mean_rewards or {}

    def mean(player: str) -> str:
        return f"{scored[player]['mean_reward']:+.2f} ({scored[player]['answers']})" if player in scored else "–"

    return [
        [
            rank,
            s.player,
            round(s.rating),
            f"{s.ci_low:.0f} – {s.ci_high:.0f}",
            s.comparisons,
            f"{s.win_rate:.0%}",
            mean(s.player),
        ]
        for rank, s in enumerate(rows, 1)
    ]


def interval_plot(rows: Sequence[Standing]) -> str:
    """The ratings as a picture: one line per player from the low to the high end of its 95% interval, a dot at
    its rating, the mean (1000) dashed; players in their natural order (base, sft, pref v1, v2, …) so the effect
    of each version reads top to bottom. SVG drawn in the page theme's own colours (CSS variables), so it reads in
    light and dark mode; only numbers and the players' generated names reach it."""
    if not rows:
        return "<div class='pg-meta'>No games yet: the picture appears with the first decisive vote.</div>"
    rows = sorted(rows, key=lambda s: _player_order(s.player))
    low = min(min(s.ci_low for s in rows), CENTRE)
    high = max(max(s.ci_high for s in rows), CENTRE)
    step = next(s for s in (10, 25, 50, 100, 200, 500, 1000, 2000) if (high - low) / s <= 8)
    low, high = step * math.floor(low / step - 0.5), step * math.ceil(high / step + 0.5)
    width, left, right, row_height, top = 640, 90, 150, 30, 10
    plot_width = width - left - right
    height = top + row_height * len(rows) + 34

    def x(value: float) -> float:
        return left + plot_width * (value - low) / (high - low)

    parts = [
        f"<line x1='{x(CENTRE):.1f}' y1='{top - 4}' x2='{x(CENTRE):.1f}' y2='{height - 30}' "
        "style='stroke: var(--body-text-color-subdued)' stroke-dasharray='4 3'/>"
    ]
    tick = low
    while tick <= high:
        parts.append(
            f"<line x1='{x(tick):.1f}' y1='{height - 30}' x2='{x(tick):.1f}' y2='{height - 26}' "
            "stroke='currentColor'/>"
            f"<text x='{x(tick):.1f}' y='{height - 12}' text-anchor='middle' font-size='11'>{tick:.0f}</text>"
        )
        tick += step
    for i, s in enumerate(rows):
        y = top + row_height * i + row_height / 2
        parts.append(
            f"<text x='{left - 10}' y='{y + 4:.1f}' text-anchor='end' font-size='13'>{html.escape(s.player)}</text>"
            f"<line x1='{x(s.ci_low):.1f}' y1='{y:.1f}' x2='{x(s.ci_high):.1f}' y2='{y:.1f}' "
            "style='stroke: var(--color-accent)' stroke-width='3' stroke-linecap='round'/>"
            f"<circle cx='{x(s.rating):.1f}' cy='{y:.1f}' r='5' stroke-width='1.5' "
            "style='fill: var(--color-accent); stroke: var(--background-fill-primary)'/>"
            f"<text x='{width - right + 10}' y='{y + 4:.1f}' font-size='12'>{s.rating:.0f} "
            f"({s.ci_low:.0f}–{s.ci_high:.0f}) · {s.comparisons}</text>"
        )
    return (
        f"<div class='pg-ratings' style='color: var(--body-text-color)'>"
        f"<svg viewBox='0 0 {width} {height}' width='100%' role='img' "
        f"aria-label='Ratings with 95% intervals' style='font-family: var(--font); fill: currentColor'>"
        + "".join(parts)
        + "</svg>"
        "<div class='pg-meta'>Rating (dot) and 95% interval (line) per player; dashed: the mean, 1000. Right: "
        "rating (interval) · games.</div></div>"
    )
