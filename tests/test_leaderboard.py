import itertools
import math

import numpy as np
import pytest
from helpers import add_compare

from playground import leaderboard as lb
from playground.store import Store

_ids = itertools.count(1)


def answer(arm, version=0, position=None, answer_id=None):
    # distinct ids and texts: identical texts are no game (see test_votes)
    return {
        "answer_id": answer_id or next(_ids),
        "arm": arm,
        "adapter_version": version,
        "position": position,
        "text": f"{arm} v{version} said {position}",
    }


def vote(kind, answers, outcome=None):
    return {"kind": kind, "outcome": outcome, "answers": answers}


def pairs(outcomes):
    return [(o.first, o.second, o.score) for o in outcomes]


# -- players and outcomes -------------------------------------------------------------------------------


def test_players_pref_v0_is_the_sft_model():
    assert lb.player("base", 0) == "base"
    assert lb.player("sft", 0) == "sft"
    assert lb.player("pref", 0) == "sft"
    assert lb.player("pref", 3) == "pref v3"


def test_best_winner_only_beats_each_other_answer():
    v = vote("best", [answer("pref", 2, 0), answer("base"), answer("sft")])
    assert pairs(lb.games_from_votes([v])) == [("pref v2", "base", 1.0), ("pref v2", "sft", 1.0)]


def test_full_ranking_gives_every_implied_pair():
    v = vote("best", [answer("sft", 0, 0), answer("pref", 1, 1), answer("base", 0, 2)])
    assert pairs(lb.games_from_votes([v])) == [("sft", "pref v1", 1.0), ("sft", "base", 1.0), ("pref v1", "base", 1.0)]


def test_pairwise_outcomes_and_ties():
    a, b = answer("pref", 1, 0), answer("pref", 2, 1)
    assert pairs(lb.games_from_votes([vote("pairwise", [a, b], "a")])) == [("pref v1", "pref v2", 1.0)]
    assert pairs(lb.games_from_votes([vote("pairwise", [a, b], "b")])) == [("pref v2", "pref v1", 1.0)]
    assert pairs(lb.games_from_votes([vote("pairwise", [a, b], "tie")])) == [("pref v1", "pref v2", 0.5)]


@pytest.mark.parametrize(
    "v",
    [
        vote("pairwise", [answer("base", 0, 0), answer("sft", 0, 1)], "both_bad"),
        vote("all_bad", [answer("base"), answer("sft"), answer("pref", 1)]),
        vote("thumb", [answer("base", 0, 0), answer("sft"), answer("pref", 1)], "up"),
    ],
)
def test_votes_that_name_no_winner_are_left_out(v):
    assert lb.games_from_votes([v]) == []


def test_same_player_pairs_are_left_out():
    # At version 0 the preference arm is the SFT model: SFT beating "pref v0" is the model beating itself.
    v = vote("best", [answer("sft", 0, 0), answer("pref", 0), answer("base")])
    assert pairs(lb.games_from_votes([v])) == [("sft", "base", 1.0)]
    duel = vote("pairwise", [answer("pref", 2, 0), answer("pref", 2, 1)], "a")
    assert lb.games_from_votes([duel]) == []


# -- the fit ----------------------------------------------------------------------------------------------


def synthetic(strengths, games_per_pair, seed=0):
    rng = np.random.default_rng(seed)
    names = list(strengths)
    outcomes, index = [], 0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            p = strengths[a] / (strengths[a] + strengths[b])
            for _ in range(games_per_pair):
                outcomes.append(lb.Game(index, a, b, float(rng.random() < p)))
                index += 1
    return outcomes


def test_fit_recovers_known_strengths():
    truth = {"base": 1.0, "sft": 3.0, "pref v1": 9.0}
    rows = {s.player: s for s in lb.standings(synthetic(truth, 2000), bootstrap=0)}
    # Elo points between two players = 400 * log10(strength ratio): 3x is about 191 points.
    assert rows["sft"].rating - rows["base"].rating == pytest.approx(400 * math.log10(3), abs=25)
    assert rows["pref v1"].rating - rows["sft"].rating == pytest.approx(400 * math.log10(3), abs=25)
    assert sum(s.rating for s in rows.values()) / 3 == pytest.approx(1000)


def test_mm_fit_matches_the_maximum_likelihood_condition():
    # At the BT maximum (with the prior games included), each player's expected wins equal its actual wins.
    outcomes = synthetic({"base": 1.0, "sft": 2.0, "pref v1": 5.0, "pref v2": 4.0}, 30, seed=3)
    players = ["base", "sft", "pref v1", "pref v2"]
    index = {p: i for i, p in enumerate(players)}
    first = np.array([index[o.first] for o in outcomes])
    second = np.array([index[o.second] for o in outcomes])
    score = np.array([o.score for o in outcomes])
    theta = lb.fit(4, first, second, score, prior=0.0)
    p = np.exp(theta)
    expected = np.zeros(4)
    np.add.at(expected, first, p[first] / (p[first] + p[second]))
    np.add.at(expected, second, p[second] / (p[first] + p[second]))
    actual = np.bincount(first, score, 4) + np.bincount(second, 1 - score, 4)
    assert expected == pytest.approx(actual, abs=1e-6)


def test_prior_keeps_an_unbeaten_player_finite():
    outcomes = [lb.Game(i, "pref v1", "sft", 1.0) for i in range(5)]
    rows = {s.player: s for s in lb.standings(outcomes, bootstrap=50)}
    assert math.isfinite(rows["pref v1"].rating) and rows["pref v1"].rating > rows["sft"].rating
    assert rows["pref v1"].wins == 5 and rows["sft"].wins == 0 and rows["sft"].comparisons == 5


def test_ties_only_give_equal_ratings():
    outcomes = [lb.Game(i, "base", "sft", 0.5) for i in range(10)]
    rows = lb.standings(outcomes, bootstrap=20)
    assert [s.rating for s in rows] == pytest.approx([1000, 1000])
    assert [s.win_rate for s in rows] == [0.5, 0.5]


def test_bootstrap_intervals_contain_the_estimate_shrink_with_data_and_repeat():
    truth = {"base": 1.0, "sft": 2.0}
    small = lb.standings(synthetic(truth, 20), bootstrap=200, seed=1)
    large = lb.standings(synthetic(truth, 400), bootstrap=200, seed=1)
    for rows in (small, large):
        for s in rows:
            assert s.ci_low <= s.rating <= s.ci_high
    width = {s.player: s.ci_high - s.ci_low for s in small}
    assert all(s.ci_high - s.ci_low < width[s.player] / 2 for s in large)
    assert lb.standings(synthetic(truth, 20), bootstrap=200, seed=1) == small


def test_sorted_by_rating_and_empty_input():
    rows = lb.standings(synthetic({"base": 1.0, "sft": 4.0, "pref v1": 2.0}, 200), bootstrap=0)
    assert [s.player for s in rows] == ["sft", "pref v1", "base"]
    assert lb.leaderboard([]) == []
    assert lb.table(rows)[0][:2] == [1, "sft"] and len(lb.table(rows)[0]) == len(lb.TABLE_HEADERS)


# -- from the store ---------------------------------------------------------------------------------------


def test_leaderboard_from_stored_votes(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    for i in range(6):  # the preference-tuned v1 answer wins every best-of-three vote
        _, ids = add_compare(store, f"Prompt {i}?", {"base": f"b{i}", "sft": f"s{i}", "pref": f"p{i}"}, version=1)
        store.vote_best("s1", _, [ids["pref"]])
    _, ids = add_compare(store, "Tie?", {"base": "x", "sft": "y", "pref": "z"}, version=1)
    store.vote_pairwise("s1", _, ids["base"], ids["sft"], "tie")
    store.vote_all_bad("s2", _)
    store.vote_thumb("s3", ids["base"], True)

    rows = lb.leaderboard(store.export_votes(), bootstrap=100)
    assert [s.player for s in rows][0] == "pref v1"
    by = {s.player: s for s in rows}
    assert by["pref v1"].comparisons == 12 and by["pref v1"].wins == 12
    assert by["base"].comparisons == 7 and by["base"].wins == 0.5
    assert by["sft"].comparisons == 7 and by["sft"].wins == 0.5
