"""On a Space (SPACE_ID set) the admin actions fail closed: without PLAYGROUND_ADMIN_TOKEN, rollback, Hub pushes and
the raw-vote export are disabled and say how to enable them; with it, they need it. A push never falls back to the
server's own HF_TOKEN unless an admin gave the configured token. The pair export stays open and carries no session,
address or voter.

Real app processes (`python app.py`, tiny models) driven with gradio_client; their Hub is a local fake endpoint that
records the token of every request, so "allowed" means the push got past the admin check and failed at the Hub."""

from __future__ import annotations

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from app_process import start_app, wait_until
from gradio_client import Client
from helpers import add_short_vs_long_votes

from playground.data_sets import DataSet
from playground.processes import free_port

ADMIN = "s3cret-token"
SERVER_TOKEN = "hf_fake_server_token"
SPACE = {"SPACE_ID": "someone/alignment-playground"}
SAMPLING = (0.7, 0.9, 16)
ENABLE = ("set PLAYGROUND_ADMIN_TOKEN as a Space secret", "restart the Space", "admin token box")


class FakeHub:
    """A Hub endpoint that refuses everything (401) and remembers the Authorization header of each request."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self):
                seen.append((self.command, self.path, self.headers.get("authorization")))
                body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _refuse

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tokens(self) -> set:
        return {auth for _, _, auth in self.seen}

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def hub():
    fake = FakeHub()
    yield fake
    fake.close()


def space_app(tiny_models, tiny_adapters, folder, hub, admin_token=None):
    """A Space-like app (online, its Hub the fake one, HF_TOKEN set) whose data set already has version 1 serving."""
    data_dir = folder / "data"
    store = DataSet.for_models(data_dir, str(tiny_models["base"]), str(tiny_models["sft"])).open_store()
    add_short_vs_long_votes(store, 2)
    run = store.start_round(0, [p["id"] for p in store.pending_pairs()], {}, pid=None)
    assert store.finish_round(run, tiny_adapters[1], {}) == 1
    env = {**SPACE, "HF_TOKEN": SERVER_TOKEN, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    if admin_token:
        env["PLAYGROUND_ADMIN_TOKEN"] = admin_token
    app = start_app(tiny_models, data_dir, args=["--no-trainer", "--persist", "off"], env=env)
    client = Client(app.url, verbose=False)
    try:
        wait_until(
            lambda: (s := client.predict(api_name="/stats"))["ready"] and s["engine_version"] == 1,
            180,
            "the models to load with version 1 serving",
        )
    except BaseException:
        app.stop()
        raise
    return app


@pytest.fixture(scope="module")
def closed(tiny_models, tiny_adapters, tmp_path_factory, hub):
    """A Space without an admin token."""
    app = space_app(tiny_models, tiny_adapters, tmp_path_factory.mktemp("closed-space"), hub)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def guarded(tiny_models, tiny_adapters, tmp_path_factory, hub):
    """A Space with PLAYGROUND_ADMIN_TOKEN set."""
    app = space_app(tiny_models, tiny_adapters, tmp_path_factory.mktemp("guarded-space"), hub, admin_token=ADMIN)
    yield app
    app.stop()


def client_of(app) -> Client:
    return Client(app.url, verbose=False)


def stats(client) -> dict:
    return client.predict(api_name="/stats")


def says_how_to_enable(message: str, action: str) -> bool:
    return message.startswith(f"⚠ {action} is disabled on this Space") and all(step in message for step in ENABLE)


def store_file(app):
    return next(app.data_dir.rglob("playground.sqlite3"))


def components(app) -> list[dict]:
    return httpx.get(app.url + "config", timeout=30).json()["components"]


# ---- a Space without an admin token: closed -------------------------------------------------------------------


@pytest.mark.slow
def test_without_an_admin_token_rollback_is_disabled(closed):
    client = client_of(closed)
    for token in ("", "anything"):  # no token is configured, so none can match
        assert says_how_to_enable(client.predict(0, token, api_name="/rollback"), "Rolling back")
    after = stats(client)
    assert after["serving_version"] == 1 and after["engine_version"] == 1


def test_without_an_admin_token_push_is_disabled_and_the_hub_never_hears_of_it(closed, hub):
    client = client_of(closed)
    before = len(hub.seen)
    for hf_token in ("", "hf_visitor"):
        message = client.predict(hf_token, "someone/votes", "", True, "", api_name="/push")
        assert says_how_to_enable(message, "Pushing to the Hub")
    assert len(hub.seen) == before, "nothing reached the Hub"


def test_without_an_admin_token_the_raw_votes_are_disabled_and_the_pairs_stay_open(closed):
    client = client_of(closed)
    client.predict("Name a colour.", *SAMPLING, None, False, api_name="/compare")
    assert client.predict("1", api_name="/vote_best")[0].startswith("✓ Thanks!")

    path, message = client.predict("votes", "", api_name="/export")
    assert path is None and says_how_to_enable(message, "Exporting the raw votes")

    path, message = client.predict("pairs", "", api_name="/export")
    text = open(path, encoding="utf-8").read()
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == stats(client)["counts"]["pairs"] and "preference pairs" in message
    assert all(row.keys() == {"prompt", "chosen", "rejected"} for row in rows)
    voters = {row[0] for row in sqlite3.connect(store_file(closed)).execute("SELECT voter FROM votes")} - {None}
    assert voters and all(voter.startswith("ip:") for voter in voters)
    for trace in (client.session_hash, *voters, "127.0.0.1"):
        assert trace not in text, f"the pair export carries {trace!r}"


def test_the_admin_boxes_show_and_the_page_says_what_happens_to_votes(closed):
    shown = components(closed)
    admin_boxes = [c for c in shown if str(c["props"].get("label", "")).startswith("Admin token")]
    assert len(admin_boxes) == 4 and all(c["props"]["visible"] is True for c in admin_boxes), (
        "rollback, push, raw export and the ablation each have a visible admin token box"
    )
    notice = next(c for c in shown if c["props"].get("elem_id") == "data-notice")["props"]["value"]
    assert "stored" in notice and "used to train the preference-tuned model" in notice


# ---- a Space with an admin token: open to the admin only ------------------------------------------------------


@pytest.mark.slow
def test_with_the_admin_token_rollback_needs_it_and_rolls_back(guarded):
    client = client_of(guarded)
    assert "requires the admin token" in client.predict(0, "", api_name="/rollback")
    assert "Wrong admin token" in client.predict(0, "guess", api_name="/rollback")
    assert stats(client)["engine_version"] == 1

    assert "Now serving version 0" in client.predict(0, ADMIN, api_name="/rollback")
    after = stats(client)
    assert after["serving_version"] == 0 and after["engine_version"] == 0
    assert "Now serving version 1" in client.predict(1, ADMIN, api_name="/rollback")


def test_on_a_space_the_ablation_needs_the_admin_token(closed, guarded):
    """Six rounds of training on the Space's cores: never one visitor's to start."""
    assert "disabled on this Space" in client_of(closed).predict("shorter", "", api_name="/ablate")
    assert "requires the admin token" in client_of(guarded).predict("shorter", "", api_name="/ablate")
    assert "Wrong admin token" in client_of(guarded).predict("shorter", "guess", api_name="/ablate")


def test_with_the_admin_token_the_raw_votes_need_it(guarded):
    client = client_of(guarded)
    assert "requires the admin token" in client.predict("votes", "", api_name="/export")[1]
    assert "Wrong admin token" in client.predict("votes", "guess", api_name="/export")[1]
    path, message = client.predict("votes", ADMIN, api_name="/export")
    votes = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert len(votes) == stats(client)["counts"]["votes"] and "voter" in votes[0]


def test_with_the_admin_token_push_needs_it_and_only_the_admin_gets_the_servers_token(guarded, hub):
    client = client_of(guarded)
    before = len(hub.seen)
    assert "requires the admin token" in client.predict("", "someone/votes", "", True, "", api_name="/push")
    assert "Wrong admin token" in client.predict("", "someone/votes", "", True, "guess", api_name="/push")
    assert len(hub.seen) == before, "a refused push sends nothing"

    # The admin with an empty token box: the server's HF_TOKEN, which this Hub refuses.
    message = client.predict("", "someone/votes", "", True, ADMIN, api_name="/push")
    assert message.startswith("⚠ Push failed while creating the dataset repo"), message
    assert {auth for _, _, auth in hub.seen[before:]} == {f"Bearer {SERVER_TOKEN}"}

    # A token typed in the box is the one used, never the server's.
    middle = len(hub.seen)
    message = client.predict("hf_visitor", "someone/votes", "", True, ADMIN, api_name="/push")
    assert message.startswith("⚠ Push failed while creating the dataset repo"), message
    assert {auth for _, _, auth in hub.seen[middle:]} == {"Bearer hf_visitor"}


# ---- off a Space without an admin token: one local user, everything open, but no silent server token ----------


@pytest.fixture
def local_page(tmp_path, monkeypatch):
    from playground.core import Playground
    from playground.settings import ModelSettings
    from playground.ui import Page, build_app

    monkeypatch.delenv("SPACE_ID", raising=False)
    page = Page(Playground(ModelSettings(preset="embedded", data_dir=str(tmp_path), persist="off")))
    build_app(page)
    return page


def test_off_a_space_everything_is_open_but_an_empty_token_box_never_means_the_servers_token(local_page, monkeypatch):
    from playground.ui.data import DataTab
    from playground.ui.training import TrainingTab

    monkeypatch.setenv("HF_TOKEN", SERVER_TOKEN)
    pushed = []
    monkeypatch.setattr(local_page.playground, "push", lambda token, *args, **kwargs: pushed.append(token) or "sent")
    tab = DataTab(local_page, None)
    assert not local_page.admin_gated
    for empty in ("", "   ", None):  # None: what an API call sends for an empty box
        message = tab.push(empty, "someone/votes", "", True, None)
        assert "Enter a Hugging Face token with write access" in message
    assert pushed == [], "nothing was pushed with the server's token"
    assert tab.push("hf_mine", "someone/votes", "", True, None) == "sent" and pushed == ["hf_mine"]
    assert "does not exist" in TrainingTab(local_page).rollback(3, None), "rollback is open: it tried"
    assert tab.export("votes", None)[1].startswith("✓ 0 votes")


def test_publishing_never_resolves_a_missing_token_to_the_servers(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from playground.publishing import push_to_hub
    from playground.store import Store

    monkeypatch.setenv("HF_TOKEN", SERVER_TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    fake = FakeHub()
    try:
        for token in (None, "", "  "):
            message = push_to_hub(Store(tmp_path / "db.sqlite3"), token, "someone/votes", endpoint=fake.url)
            assert message.startswith("⚠ No Hugging Face token")
        assert fake.seen == []
    finally:
        fake.close()


@pytest.mark.slow
def test_the_notice_names_the_dataset_repo_the_votes_are_published_to(local_page):
    assert "someone/votes" not in local_page.data_notice()
    local_page.hub_dataset = "someone/votes"
    assert "published to the dataset repo `someone/votes`" in local_page.data_notice()
