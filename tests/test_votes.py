"""What a vote means: outcomes, pairs, and the agreement of pairs, leaderboard and win rates on stored votes."""

from collections import Counter

import pytest
from helpers import add_compare

from playground import dashboard, leaderboard
from playground.store import Store
from playground.votes import outcomes, ranking_problem, to_trl
from playground.votes import pairs_of as pairs_from_vote

A = {"id": 1, "text": "Paris."}
B = {"id": 2, "text": "Lyon."}
C = {"id": 3, "text": "I don't know."}
ALL = [A, B, C]


def test_best_only_beats_every_other_answer():
    assert pairs_from_vote("best", [B], None, ALL) == [(2, 1), (2, 3)]


def test_full_ranking_gives_every_higher_over_lower():
    assert pairs_from_vote("best", [C, A, B], None, ALL) == [(3, 1), (3, 2), (1, 2)]


def test_identical_texts_after_strip_give_no_pair():
    twin = {"id": 4, "text": "  Paris.\n"}
    answers = [A, twin, B]
    assert pairs_from_vote("best", [A], None, answers) == [(1, 2)]
    assert pairs_from_vote("best", [A, twin, B], None, answers) == [(1, 2), (4, 2)]
    assert pairs_from_vote("pairwise", [A, twin], "a", answers) == []


@pytest.mark.parametrize("outcome, expected", [("a", [(1, 2)]), ("b", [(2, 1)]), ("tie", []), ("both_bad", [])])
def test_pairwise(outcome, expected):
    assert pairs_from_vote("pairwise", [A, B], outcome, ALL) == expected


def test_all_bad_and_thumbs_give_no_pairs():
    assert pairs_from_vote("all_bad", [], None, ALL) == []
    assert pairs_from_vote("thumb", [A], "up", ALL) == []
    assert pairs_from_vote("thumb", [A], "down", ALL) == []


def test_single_answer_comparison_gives_no_pair():
    assert pairs_from_vote("best", [A], None, [A]) == []


@pytest.mark.parametrize(
    "ranking, problem",
    [([1], None), ([3, 1, 2], None), ([], "at least"), ([1, 1, 2], "more than once"), ([1, 2], "all 3 answers")],
)
def test_ranking_problem(ranking, problem):
    found = ranking_problem(ranking, [1, 2, 3])
    assert (found is None) if problem is None else (problem in found)


def test_bad_input_raises():
    with pytest.raises(ValueError):
        pairs_from_vote("best", [A, B], None, ALL)  # partial ranking
    with pytest.raises(ValueError):
        pairs_from_vote("pairwise", [A, B], "maybe", ALL)
    with pytest.raises(ValueError):
        pairs_from_vote("stars", [A], None, ALL)


def test_to_trl_conversational_format():
    pair = {"prompt_text": "Capital of France?", "chosen_text": "Paris.", "rejected_text": "Lyon.", "id": 7}
    assert to_trl(pair) == {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "Lyon."}],
    }


def test_a_tie_is_an_outcome_but_no_pair():
    (tie,) = outcomes("pairwise", [A, B], "tie", ALL)
    assert (tie.first, tie.second, tie.score, tie.decisive) == (A, B, 0.5, False)
    assert pairs_from_vote("pairwise", [A, B], "tie", ALL) == []


def test_pairs_leaderboard_and_win_rates_agree_on_every_vote_kind(tmp_path):
    """One meaning of a vote: every decisive game between two players is a stored pair, ties count half in the
    ratings and in the win rates alike, and what makes no pair (identical texts) makes no game either."""
    store = Store.open(tmp_path)
    texts = {"base": "Base says hi.", "sft": "SFT says hello.", "pref": "Pref says hey."}
    cid, ids = add_compare(store, "best, winner only", texts, version=2)
    store.vote_best("s", cid, [ids["pref"]])
    cid, ids = add_compare(store, "best, full ranking", texts, version=1)
    store.vote_best("s", cid, [ids["sft"], ids["base"], ids["pref"]])
    cid, ids = add_compare(store, "best at version 0", texts, version=0)  # pref v0 is the SFT model
    store.vote_best("s", cid, [ids["pref"], ids["base"], ids["sft"]])
    cid, ids = add_compare(store, "identical texts", {"base": "Same.", "sft": " Same.\n", "pref": "Other."}, version=1)
    store.vote_best("s", cid, [ids["base"], ids["sft"], ids["pref"]])
    cid, ids = add_compare(store, "all bad", texts, version=2)
    store.vote_all_bad("s", cid)
    store.vote_thumb("s", ids["base"], True)
    store.vote_thumb("s", ids["pref"], False)
    assert store.add_correction("s", cid, "A person's better answer.").pairs_created == 3  # trains, plays no game
    for outcome in ("a", "b", "tie", "both_bad"):
        cid, ids = add_compare(store, f"duel {outcome}", texts, version=2)
        store.vote_pairwise("s", cid, ids["base"], ids["pref"], outcome)
    duel = store.add_comparison(
        "two samples of v2",
        "s",
        mode="duel",
        answers=[
            {"arm": "pref", "text": "One.", "model": "m", "adapter_version": 2},
            {"arm": "pref", "text": "Two.", "model": "m", "adapter_version": 2},
        ],
    )
    store.vote_pairwise("s", duel[0], *duel[1], "a")
    assert store.counts()["votes_by_kind"] == {"best": 4, "all_bad": 1, "pairwise": 5, "thumb": 2, "correction": 1}

    # Pairs: every decisive outcome, including a model against itself (an on-policy duel teaches DPO the most).
    player = {
        a["id"]: a["arm"] if a["arm"] == "human" else leaderboard.player(a["arm"], a["adapter_version"])
        for v in store.export_votes()
        for a in ({**x, "id": x["answer_id"]} for x in v["answers"])
    }
    stored = store.pairs()
    # winner-only, ranking, v0 ranking, identical, correction, a, b, duel
    assert len(stored) == 3 + 3 + 3 + 1 + 3 + 1 + 1 + 1
    decisive = Counter(
        (player[p["chosen_answer_id"]], player[p["rejected_answer_id"]]) for p in stored if p["chosen_arm"] != "human"
    )
    assert sum(p["chosen_arm"] == "human" for p in stored) == 3

    # Leaderboard games: the same decisive outcomes between two players, plus ties at half.
    games = leaderboard.games_from_votes(store.export_votes())
    assert Counter((g.first, g.second) for g in games if g.score == 1) == Counter(
        {k: n for k, n in decisive.items() if k[0] != k[1]}
    )
    assert [(g.first, g.second, g.score) for g in games if g.score != 1] == [("base", "pref v2", 0.5)]
    assert ("sft", "sft") in decisive and ("pref v2", "pref v2") in decisive  # pairs, but never games

    # Win rates (versions table, `versions --json`) and the leaderboard count the same games and wins.
    facts = dashboard.compute(store)
    standings = {s.player: s for s in facts["standings"]}
    assert set(standings) == set(facts["win_rates"]) == {"base", "sft", "pref v1", "pref v2"}
    for name, rate in facts["win_rates"].items():
        assert (rate["games"], rate["wins"]) == (standings[name].comparisons, standings[name].wins), name
    by_version = {v["version"]: v["vote_win_rate"] for v in facts["versions"]}
    assert by_version == {}  # no adapter versions exist in this store, only answers that name them
    assert facts["sft_win_rate"] == facts["win_rates"]["sft"]
    # Spelled out, so a change of meaning shows here: pref v2 beat base and sft (winner only), lost one duel to
    # base, won one and tied one; its all-bad, both-bad, thumbs and self-duel votes are no games.
    assert facts["win_rates"]["pref v2"] == {"games": 5, "wins": 3.5, "rate": 0.7}
    # sft (with pref v0): lost once, beat base and pref v1 in the ranking, 1 of 2 at v0, beat pref v1 once more.
    assert facts["win_rates"]["sft"] == {"games": 6, "wins": 4.0, "rate": 4 / 6}
