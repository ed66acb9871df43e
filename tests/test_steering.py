"""Nobody steers alone: with a per-voter cap (`--pairs-per-voter`, always on a Space) a round asked for from the page or
its API ("Train now", `/train_now`) starts only when the automatic rule would start one (`--min-pairs` counted under
the cap), or with the admin token. The trainer enforces it (where rounds are decided), the button says why a round
waits."""

from __future__ import annotations

import time

import pytest
from helpers import add_short_vs_long_votes, tiny_round

from playground.core import Playground
from playground.generation import Engine
from playground.models import load_model
from playground.processes import wait_for
from playground.settings import ModelSettings
from playground.training import request_honoured
from playground.ui import Page
from playground.ui.training import TrainingTab

ADMIN = "s3cret-token"
CAPPED = tiny_round(min_pairs=8, pairs_per_voter=4, eval_tokens=0)


def capped_page(tmp_path, settings=CAPPED, admin_token=ADMIN, on_space=True) -> Page:
    """A Space-like page with no models loaded: Train now only needs the store."""
    playground = Playground(ModelSettings(preset="smollm2-135m", data_dir=str(tmp_path)), settings)
    return Page(playground, admin_token=admin_token, on_space=on_space)


def test_the_rule_honours_only_the_admin_under_a_per_voter_cap():
    visitor, admin = {"admin": False}, {"admin": True}
    assert request_honoured(visitor, tiny_round(pairs_per_voter=0)), "one person's machine: every request"
    assert not request_honoured(visitor, CAPPED) and request_honoured(admin, CAPPED)
    assert not request_honoured(None, tiny_round(pairs_per_voter=0))


def test_a_visitors_train_now_waits_and_says_why(tmp_path):
    page = capped_page(tmp_path)
    store = page.playground.store
    add_short_vs_long_votes(store, 4, session="one-visitor")  # a voter's whole cap, below min_pairs
    tab = TrainingTab(page)

    message = tab.train_now("")
    assert message.startswith("⏳ The round waits") and "8 pieces" in message and "at most 4" in message
    assert "4 wait now" in message and "admin token" in message
    assert store.round_requested() is None, "a visitor's request is not even recorded"

    assert tab.train_now("guess") == "⚠ Wrong admin token."
    assert store.round_requested() is None

    assert tab.train_now(ADMIN).startswith("✓ Asked for a round on 4 pairs")
    assert store.round_requested()["admin"] is True


def test_enough_feedback_from_enough_voters_needs_no_request(tmp_path):
    page = capped_page(tmp_path)
    for voter in ("a", "b"):
        add_short_vs_long_votes(page.playground.store, 4, session=voter)
    assert "the trainer starts a round within seconds" in TrainingTab(page).train_now("")


def test_without_a_cap_train_now_asks_for_a_round_as_before(tmp_path):
    page = capped_page(tmp_path, tiny_round(pairs_per_voter=0), admin_token=None, on_space=False)
    add_short_vs_long_votes(page.playground.store, 2)
    assert TrainingTab(page).train_now(None).startswith("✓ Asked for a round on 2 pairs")
    assert page.playground.store.round_requested()["admin"] is False


@pytest.mark.slow
def test_the_trainer_refuses_a_visitors_request_and_takes_the_admins(tiny_models, tmp_path):
    """Whatever wrote the request (an old page, a script on the store), the trainer applies the rule."""
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    models = ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path))
    playground = Playground(models, CAPPED, engine=engine)
    store = playground.store
    try:
        add_short_vs_long_votes(store, 4, session="one-visitor")
        playground.start_trainer()
        assert wait_for(lambda: (store.trainer_state() or {}).get("state") == "waiting", timeout=120)
        playground.train_now(admin=False)
        assert wait_for(lambda: store.round_requested() is None, timeout=60), "the trainer reads the request"
        time.sleep(8)  # a few more of the trainer's polls (2 s apart): still no round
        assert store.rounds() == [] and store.serving_version() == 0
        assert store.trainer_state()["state"] == "waiting" and store.trainer_state()["pending"] == 4

        playground.train_now(admin=True)
        assert wait_for(lambda: store.serving_version() == 1, timeout=240), "the admin's request starts a round"
        assert store.rounds()[0]["learned_from"]["pairs"] == 4
    finally:
        playground.close()
