"""Flooding: vote limits per session and per client address, the voter each vote records (a signed-in Hugging Face
user, or a keyed hash of the address: never the address), the cap on the pairs one voter puts into a round, and
sign-in required to vote (`--require-login`)."""

from __future__ import annotations

import re
import sqlite3

import gradio as gr
import pytest
from app_process import start_app, wait_until
from gradio_client import Client
from helpers import add_compare
from starlette.datastructures import Headers

from playground import training
from playground.settings import RoundSettings
from playground.store import Store
from playground.voters import address_voter, user_voter

PER_ADDRESS = 30
CAP = 4
FLOODER = "203.0.113.7"  # the address the Space's proxy saw; what the script wrote before it is its own choice
OTHER = "198.51.100.9"
SAMPLING = (0.7, 0.9, 16)
VOTER = re.compile(r"ip:[0-9a-f]{16}")


# ---- who the voter is ------------------------------------------------------------------------------------------


def test_an_address_is_recorded_as_a_keyed_hash(tmp_path):
    store = Store.open(tmp_path / "a")
    salt = store.voter_salt()
    assert len(salt) == 32 and Store.open(tmp_path / "a").voter_salt() == salt, "created once, kept in the store"
    assert Store.open(tmp_path / "b").voter_salt() != salt, "every store has its own"
    voter = address_voter(salt, FLOODER)
    assert VOTER.fullmatch(voter) and FLOODER not in voter
    assert voter == address_voter(salt, FLOODER) != address_voter(salt, OTHER)
    assert address_voter(b"another salt", FLOODER) != voter, "without the salt, hashing addresses finds nothing"
    assert user_voter("alice") == "hf:alice"


def a_request(peer: str, *forwarded: str) -> gr.Request:
    raw = [(b"x-forwarded-for", line.encode()) for line in forwarded]
    return gr.Request(headers=Headers(raw=raw), client={"host": peer}, session_hash="s1")


def test_the_address_is_the_peer_or_behind_a_space_proxy_the_last_forwarded_entry():
    from playground.ui.page import client_address

    spoofed = a_request("10.0.0.2", f"1.2.3.4, {FLOODER}")
    assert client_address(spoofed, behind_proxy=False) == "10.0.0.2", "off a Space the header is not believed"
    assert client_address(spoofed, behind_proxy=True) == FLOODER, "the entry the proxy appended, not the client's"
    assert client_address(a_request("10.0.0.2", "1.2.3.4", f"5.6.7.8, {OTHER}"), behind_proxy=True) == OTHER
    assert client_address(a_request("10.0.0.2"), behind_proxy=True) == "10.0.0.2", "no header: the peer"
    assert client_address(None, behind_proxy=True) is None


# ---- the cap on one voter's pairs in a round -------------------------------------------------------------------


def duel_votes(store: Store, n: int, *, voter: str | None, session: str) -> list[int]:
    """n duel votes, one pair each; returns the pair ids."""
    ids = []
    for i in range(n):
        texts = {"sft": f"Short answer {i}.", "pref": f"A much longer answer {i}. " * 3}
        cid, answers = add_compare(store, f"{session} {voter} question {i}?", texts, session=session)
        store.vote_pairwise(session, cid, answers["sft"], answers["pref"], "a", voter=voter)
        ids.append(store.pairs()[-1]["id"])
    return ids


def test_one_voter_puts_at_most_the_cap_into_a_round_oldest_first(tmp_path):
    store = Store.open(tmp_path)
    flood = duel_votes(store, 10, voter="ip:aaaa", session="s1")
    flood += duel_votes(store, 5, voter="ip:aaaa", session="s2")  # a new session does not make a new voter
    alice = duel_votes(store, 3, voter="hf:alice", session="s3")
    cli = duel_votes(store, 6, voter=None, session="cli")  # no voter recorded: the session stands for it
    settings = RoundSettings(pairs_per_voter=CAP, min_pairs=8)

    assert store.pending_counts(("pairs",))["pairs"] == 24
    eligible = training.eligible_counts(store, settings)["pairs"]
    assert store.pending_counts(("pairs",), per_voter=CAP)["pairs"] == eligible == 4 + 3 + 4
    chosen = training.select_feedback(store, settings)
    new, replay = chosen.new["pairs"], chosen.replay["pairs"]
    assert [p["id"] for p in new] == sorted(flood[:4] + alice + cli[:4]) and replay == []
    assert {p["voter"] for p in new} == {"ip:aaaa", "hf:alice", None}

    limited = training.select_feedback(store, RoundSettings(pairs_per_voter=CAP, max_new_pairs=5)).new["pairs"]
    assert [p["id"] for p in limited] == sorted(flood[:4] + alice + cli[:4])[:5], "the oldest eligible ones"
    uncapped = training.select_feedback(store, RoundSettings(pairs_per_voter=0)).new["pairs"]
    assert len(uncapped) == 24, "0 = no cap"

    # The rest stay pending: the next round takes each voter's next oldest.
    run = store.start_round(0, [p["id"] for p in new], {}, pid=None)
    store.finish_round(run, tmp_path / "adapter", {})
    assert [p["id"] for p in training.select_feedback(store, settings).new["pairs"]] == sorted(flood[4:8] + cli[4:])


def test_one_flooding_voter_alone_cannot_start_a_round(tmp_path):
    store = Store.open(tmp_path)
    duel_votes(store, 60, voter="ip:aaaa", session="s1")
    settings = RoundSettings(pairs_per_voter=CAP, min_pairs=8)
    assert sum(training.eligible_counts(store, settings).values()) == CAP < settings.min_pairs
    # Below min_pairs run_round returns before loading anything: no model needed to see it decline.
    assert training.run_round(store, tmp_path / "adapters", "no-model-needed", settings) is None
    assert store.rounds() == []


# ---- sign-in required ------------------------------------------------------------------------------------------


@pytest.fixture
def login_page(tmp_path):
    from playground.core import Playground
    from playground.settings import ModelSettings
    from playground.ui import Page

    return Page(Playground(ModelSettings(preset="embedded", data_dir=str(tmp_path), persist="off")), require_login=True)


def profile(username: str) -> gr.OAuthProfile:
    return gr.OAuthProfile(
        {
            "name": username.title(),
            "preferred_username": username,
            "profile": f"https://huggingface.co/{username}",
            "picture": "",
        }
    )


def compare_state(page, prompt="Why?") -> dict:
    cid, ids = add_compare(page.playground.store, prompt, {"base": "b", "sft": "s", "pref": "p"})
    return {
        "mode": "compare",
        "comparison": cid,
        "answers": ids,
        "order": ["base", "sft", "pref"],
        "blind": False,
        "revealed": True,
        "streaming": False,
    }


def test_with_require_login_a_signed_out_vote_is_refused_and_a_signed_in_one_records_the_user(login_page):
    from playground.ui.compare import CompareTab
    from playground.ui.duel import DuelTab

    tab, state = CompareTab(login_page), compare_state(login_page)
    store = login_page.playground.store
    assert "Sign in with Hugging Face to vote" in tab.vote_best("1", state, None, None)[0]
    assert "Sign in with Hugging Face to vote" in tab.vote_all_bad(state, None, None)[0]
    assert "Sign in with Hugging Face to vote" in tab.vote_thumb(1, True, state, None, None)
    duel = {"mode": "duel", "comparison": state["comparison"], "answers": {"a": 1, "b": 2}, "streaming": False}
    assert "Sign in with Hugging Face to vote" in DuelTab(login_page).vote("a", duel, None, None)
    assert store.counts()["votes"] == 0

    assert tab.vote_best("1", state, None, profile("alice"))[0].startswith("✓ Thanks!")
    assert tab.vote_thumb(2, False, state, None, profile("alice")).startswith("✓")
    assert [v["voter"] for v in store.export_votes()] == ["hf:alice", "hf:alice"]


def test_a_vote_records_the_signed_in_user_else_the_hashed_address(login_page):
    from playground.ui.compare import CompareTab

    login_page.require_login = False
    tab = CompareTab(login_page)
    request = a_request(FLOODER)
    assert tab.vote_best("1", compare_state(login_page, "One?"), request, None)[0].startswith("✓")
    assert tab.vote_best("1", compare_state(login_page, "Two?"), request, profile("bob"))[0].startswith("✓")
    store = login_page.playground.store
    assert [v["voter"] for v in store.export_votes()] == [address_voter(store.voter_salt(), FLOODER), "hf:bob"]


def test_a_page_that_requires_login_builds_and_starts_offline(login_page, monkeypatch):
    from playground.processes import free_port
    from playground.ui import build_app, launch

    monkeypatch.delenv("HF_TOKEN", raising=False)  # no Hub login either: Gradio's own mock would raise here
    demo = build_app(login_page)
    assert any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())
    launch(demo, "127.0.0.1", free_port())
    try:
        import httpx

        assert httpx.get(demo.local_url, timeout=30).status_code == 200
        signed_in = httpx.get(demo.local_url + "login/huggingface", timeout=30, follow_redirects=False)
        assert signed_in.status_code in (302, 307), "the local sign-in route answers"
    finally:
        demo.close()


# ---- a flood through the running app ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flooded_app(tiny_models, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("flooding") / "data"
    args = [
        "--min-pairs",
        "8",
        "--pairs-per-voter",
        str(CAP),
        "--votes-per-minute",
        "100",
        "--votes-per-minute-per-address",
        str(PER_ADDRESS),
        "--persist",
        "off",
    ]
    app = start_app(tiny_models, data_dir, args=args, env={"SPACE_ID": "someone/alignment-playground"})
    try:
        client = Client(app.url, verbose=False)
        wait_until(lambda: client.predict(api_name="/stats")["trainer_alive"], 180, "the models and the trainer")
        yield app
    finally:
        app.stop()


def behind_the_proxy(app, written_by_client: str, seen_by_proxy: str) -> Client:
    """A session as the Space's proxy forwards it: the proxy appends the address it saw to what the client wrote."""
    return Client(app.url, verbose=False, headers={"X-Forwarded-For": f"{written_by_client}, {seen_by_proxy}"})


def stats(client: Client) -> dict:
    return client.predict(api_name="/stats")


def pairs_in(reply: str) -> int:
    """The training pairs a vote's thank-you says it made."""
    found = re.search(r"added (\d+) training pair", reply)
    return int(found.group(1)) if found else 0


@pytest.mark.slow
def test_fifty_sessions_from_one_address(flooded_app):
    app = flooded_app
    # 50 sessions of one script, each claiming another address in the header it writes itself.
    sessions = [behind_the_proxy(app, f"10.{i}.0.1", FLOODER) for i in range(50)]
    for i, client in enumerate(sessions):  # answers first, so that all 50 votes fall within one minute
        assert (
            "Which answer is best?"
            in client.predict(f"Flood question {i}?", *SAMPLING, None, False, api_name="/compare")[9]
        )
    replies = [client.predict("1", api_name="/vote_best")[0] for client in sessions]

    assert all(reply.startswith("✓ Thanks!") for reply in replies[:PER_ADDRESS])
    refused = replies[PER_ADDRESS:]
    assert all(
        f"Too many votes from your network address: at most {PER_ADDRESS} a minute per address" in reply
        for reply in refused
    ), refused[0]
    assert re.search(r"Try again in \d+ s\.", refused[0])
    other = behind_the_proxy(app, "10.0.0.1", OTHER)  # the same spoofed entry, another real address: unaffected

    def other_votes(question: str) -> int:
        # A tiny random model sometimes writes the same text in two columns (no pair then): ask again until a vote
        # of this visitor makes the 2 pairs the numbers below count on.
        for attempt in range(6):
            other.predict(f"{question} ({attempt})", *SAMPLING, None, False, api_name="/compare")
            reply = other.predict("1", api_name="/vote_best")[0]
            assert reply.startswith("✓ Thanks!"), reply
            if pairs_in(reply) == 2:
                return 2
        raise AssertionError("no vote of the other visitor made 2 pairs")

    flood_pairs = sum(pairs_in(reply) for reply in replies[:PER_ADDRESS])
    assert flood_pairs >= 2 * CAP
    other_votes("Another visitor's question?")

    # The flooder's pairs and 2 from the other visitor wait; a round could take 4 + 2 < min-pairs 8.
    watcher = Client(app.url, verbose=False)
    pending = flood_pairs + 2
    assert stats(watcher)["counts"]["pairs_pending"] == pending
    waiting = wait_until(
        lambda: (
            (s := stats(watcher))["trainer"]
            and s["trainer"].get("pending") == CAP + 2
            and s["trainer"]["state"] == "waiting"
            and s
        ),
        60,
        "the trainer to count the eligible pairs",
    )
    assert waiting["trainer"]["state"] == "waiting" and waiting["rounds"] == [] and waiting["pairs_eligible"] == 6
    training_panel = watcher.predict(api_name="/panel")[1]
    assert "6 of the 8 that start one" in training_panel
    assert f"{pending - 6} more wait for later rounds" in training_panel

    # One more vote of the other visitor makes 8 eligible pairs: the round takes 4 of each voter's.
    other_votes("Another visitor's second question?")
    done = wait_until(lambda: [r for r in stats(watcher)["rounds"] if r["status"] == "done"], 240, "a round")
    assert done[0]["pairs_used"] == 2 * CAP

    db = sqlite3.connect(next(app.data_dir.rglob("playground.sqlite3")))
    per_voter = dict(
        db.execute(
            "SELECT v.voter, count(*) FROM round_pairs rp JOIN pairs p ON p.id = rp.pair_id "
            "JOIN votes v ON v.id = p.vote_id WHERE rp.round_id = ? GROUP BY v.voter",
            (done[0]["id"],),
        )
    )
    voters = [voter for (voter,) in db.execute("SELECT DISTINCT voter FROM votes")]
    assert len(voters) == 2 and all(VOTER.fullmatch(voter) for voter in voters), voters
    assert sorted(per_voter.values()) == [CAP, CAP] and set(per_voter) == set(voters)
    assert db.execute("SELECT count(*) FROM pairs WHERE round_id IS NULL").fetchone()[0] == flood_pairs + 4 - 2 * CAP
    db.close()

    # No raw address anywhere in the store's files (the database and its write-ahead log).
    stored = b"".join(path.read_bytes() for path in app.data_dir.rglob("playground.sqlite3*"))
    for address in (FLOODER, OTHER, "10.7.0.1", "127.0.0.1"):
        assert address.encode() not in stored, address
