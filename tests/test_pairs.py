import pytest

from playground.pairs import pairs_from_vote, ranking_problem, to_trl

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
    [
        ([1], None),
        ([3, 1, 2], None),
        ([], "at least"),
        ([1, 1, 2], "more than once"),
        ([1, 2], "all 3 answers"),
    ],
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
