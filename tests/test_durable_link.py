"""A running playground's durable copy (`durable.link`): bound before anything is served, woken by every commit,
and its status as the page and `stats` show it."""

from __future__ import annotations

import time
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
from helpers import add_short_vs_long_votes

from playground.settings import ModelSettings
from playground.store import Store, durable

DATA_SET = SimpleNamespace(name="ds", base="base-model", sft="sft-model")


@pytest.fixture
def store(tmp_path):
    return Store.open(tmp_path / "local" / "ds")


def settings(tmp_path, **kw) -> ModelSettings:
    return ModelSettings(data_dir=str(tmp_path / "local"), **kw)


def test_no_target_no_link(store, tmp_path):
    assert durable.link(store, DATA_SET, settings(tmp_path, persist="off"), tmp_path / "local") is None


def test_every_commit_wakes_the_copier(store, tmp_path):
    linked = durable.link(store, DATA_SET, settings(tmp_path, persist=str(tmp_path / "bucket")), tmp_path / "local")
    assert linked.binding == "started" and linked.copy.folder == durable.data_set_folder(tmp_path / "bucket", "ds")
    linked.copy.start(interval=3600)  # it would not poll again within the test: only a wake copies
    try:
        time.sleep(0.2)  # the first pass, at start, has nothing to copy
        add_short_vs_long_votes(store, 2)
        deadline = time.monotonic() + 20
        while linked.copy.pending() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert linked.copy.pending() == 0
    finally:
        linked.stop()
    status = linked.status()
    assert status["binding"] == "started" and status["hub_dataset"] is None and status["last_error"] is None
    assert "hub_error" not in status


def test_the_status_says_why_the_dataset_repo_failed(store, tmp_path):
    linked = durable.link(store, DATA_SET, settings(tmp_path, persist=str(tmp_path / "bucket")), tmp_path / "local")
    failed = Future()
    failed.set_exception(PermissionError("no write access to me/votes"))
    linked.hub_dataset, linked.hub_scheduler = "me/votes", SimpleNamespace(last_future=failed)
    status = linked.status()
    assert status["hub_dataset"] == "me/votes"
    assert status["hub_error"] == "PermissionError: no write access to me/votes"
    linked.last_error = "dataset repo me/votes: unreachable"
    assert linked.copy.last_error == linked.status()["last_error"] == "dataset repo me/votes: unreachable"
    linked.stop()


def test_a_second_start_continues_and_an_empty_store_is_restored(store, tmp_path):
    target = settings(tmp_path, persist=str(tmp_path / "bucket"))
    linked = durable.link(store, DATA_SET, target, tmp_path / "local")
    add_short_vs_long_votes(store, 2)
    linked.stop(flush=True)
    assert durable.link(store, DATA_SET, target, tmp_path / "local").binding == "continued"
    fresh = Store.open(tmp_path / "other-machine" / "ds")
    again = durable.link(fresh, DATA_SET, target, tmp_path / "other-machine")
    assert again.binding == "restored" and fresh.counts()["votes"] == store.counts()["votes"]
