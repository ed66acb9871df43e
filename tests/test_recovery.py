"""What passes stays passing: a runtime that cannot take a good version now (a vLLM server restarting, a timeout) is
retried with backoff and the version stays good; only broken files mark a version bad, and an admin can re-check
one. A round whose LoRA settings changed the adapter's shape starts from a fresh adapter and says so; a round that
fails the same way again and again stops being retried and says why."""

from __future__ import annotations

import importlib
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import add_short_vs_long_votes, tiny_round

from playground import cli
from playground.core import Playground
from playground.dashboard import version_table
from playground.generation import Engine
from playground.models import load_model
from playground.runtimes import ServingError
from playground.serving import adapter_problem
from playground.settings import ModelSettings, Sampling
from playground.training import run_round
from playground.ui.status import status_line

GREEDY = Sampling(temperature=0, max_new_tokens=8, seed=0)
watch = importlib.import_module("playground.training.watch")  # the module: the package exports its function


@pytest.fixture()
def playground(tiny_models, tmp_path):
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    models = ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path))
    pg = Playground(models, tiny_round(), engine=engine)
    yield pg
    pg.close()


def publish(playground, adapter: Path) -> int:
    """A finished round whose adapter is a copy of `adapter`."""
    store = playground.store
    add_short_vs_long_votes(store, 2, session=f"voter-{len(store.versions())}")
    folder = playground.data_set.adapters_dir / f"copy-{len(store.versions()) + 1}"
    shutil.copytree(adapter, folder)
    return store.finish_round(store.start_round(store.serving_version(), [], {}, pid=None), folder, {})


class Outage:
    """The SFT runtime's attach fails `times` times, as a restarting inference server's does, then works."""

    def __init__(self, runtime, times: int):
        self.attach, self.left, self.calls = runtime.attach, times, 0
        runtime.attach = self

    def __call__(self, name, path):
        self.calls += 1
        if self.left:
            self.left -= 1
            raise ServingError(
                "The vLLM server of the SFT model cannot be reached (ConnectError); it is starting again."
            )
        return self.attach(name, path)


def test_an_outage_keeps_a_good_version_good_and_retries_it_with_backoff(playground, tiny_adapters):
    outage = Outage(playground.engine.adapters.runtime, times=2)
    assert publish(playground, tiny_adapters[1]) == 1

    assert playground.sync_adapter() == 0, "the runtime did not take v1: what served before answers"
    assert playground.store.version(1)["state"] == "ready" and playground.store.serving_version() == 1
    retry = playground.serving.retry
    assert (retry.version, retry.attempts) == (1, 1) and "cannot be reached" in retry.error
    line = status_line(playground, "")
    assert "Adapter v1 waits for the runtime" in line and "stays good" in line and "v0 answers meanwhile" in line

    assert playground.sync_adapter() == 0 and outage.calls == 1, "no retry before the backoff is over"
    retry.at = time.monotonic()
    assert playground.sync_adapter() == 0 and outage.calls == 2
    second = playground.serving.retry
    assert second.attempts == 2 and second.seconds_left() > retry_delay(1), "the wait grows"

    second.at = time.monotonic()
    assert playground.sync_adapter() == 1 and outage.calls == 3
    assert playground.serving.retry is None and playground.engine.adapter_version == 1
    assert "✓ Ready" in status_line(playground, "")


def retry_delay(attempts: int) -> float:
    from playground.serving import FIRST_RETRY_SECONDS

    return FIRST_RETRY_SECONDS * 2 ** (attempts - 1)


def test_only_broken_files_mark_a_version_bad(playground, tiny_adapters):
    assert publish(playground, tiny_adapters[1]) == 1 and publish(playground, tiny_adapters[2]) == 2
    weights = Path(playground.store.version(2)["path"]) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated mid-tensor
    assert playground.sync_adapter() == 1
    v2 = playground.store.version(2)
    assert v2["state"] == "bad" and v2["reason"].startswith("its weights cannot be read")
    assert adapter_problem(playground.store.version(1)["path"]) is None


def test_a_version_marked_bad_is_rechecked_by_rollback_and_by_the_cli(playground, tiny_adapters, capsys):
    assert publish(playground, tiny_adapters[1]) == 1 and publish(playground, tiny_adapters[2]) == 2
    playground.sync_adapter()
    # As an outage did before: both good versions marked bad, v0 serving.
    playground.store.mark_version_bad(2, "Adapter v2 could not be loaded: the server was restarting")
    playground.store.mark_version_bad(1, "Adapter v1 could not be loaded: the server was restarting")
    assert playground.store.serving_version() == 0

    assert playground.rollback(2) == 2, "rollback re-checks a version marked bad and serves it when it reads fine"
    assert playground.store.version(2)["state"] == "ready" and playground.engine.adapter_version == 2

    args = ["versions", "--data-dir", str(playground.data_dir)]
    args += ["--base", playground.preset.base, "--sft", playground.preset.sft]
    assert cli.main([*args, "--recheck", "1"]) == 0
    assert "good" in capsys.readouterr().out and playground.store.version(1)["state"] == "ready"

    shutil.rmtree(playground.store.version(1)["path"])
    playground.store.mark_version_bad(1, "gone")
    assert cli.main([*args, "--recheck", "1"]) == 1
    assert "folder" in capsys.readouterr().err and playground.store.version(1)["state"] == "bad"


@pytest.mark.slow
def test_a_round_after_the_lora_shape_changed_starts_fresh_and_says_so(playground):
    store, sft = playground.store, str(playground.preset.sft)

    def train(**changes):
        return run_round(store, playground.data_set.adapters_dir, sft, tiny_round(eval_tokens=0, **changes))

    add_short_vs_long_votes(store, 4, session="first")
    assert train(lora_r=4) == 1
    assert store.version(1)["hyperparams"]["warm_start"] == {"parent": 0, "fresh": True, "reason": None}

    add_short_vs_long_votes(store, 4, session="second")
    assert train(lora_r=8) == 2, "a new rank: no warm start, but a round"
    warm = store.version(2)["hyperparams"]["warm_start"]
    assert warm["parent"] == 1 and warm["fresh"] is True and "rank changed (4 → 8)" in warm["reason"]
    meta = json.loads((Path(store.version(2)["path"]) / "playground.json").read_text())
    assert meta["hyperparams"]["warm_start"] == warm, "the version's own metadata says so"
    row = version_table(playground.dashboard.facts())[-1]
    assert row["parent"].startswith("v1, but trained from a fresh adapter: the LoRA rank changed")

    add_short_vs_long_votes(store, 4, session="third")
    assert train(lora_r=8, target_modules=["q_proj", "k_proj", "v_proj"]) == 3
    assert "target modules changed" in store.version(3)["hyperparams"]["warm_start"]["reason"]

    add_short_vs_long_votes(store, 4, session="fourth")
    assert train(lora_r=8, target_modules=["q_proj", "k_proj", "v_proj"]) == 4
    assert store.version(4)["hyperparams"]["warm_start"] == {"parent": 3, "fresh": False, "reason": None}
    assert playground.sync_adapter() == 4
    assert playground.engine.generate("Hello there", GREEDY)["pref"].text


class Polls:
    """Stands in for the trainer loop's clock: counts its polls and ends the loop after `limit` of them."""

    def __init__(self, limit: int, on_poll=None):
        self.limit, self.count, self.on_poll = limit, 0, on_poll

    def sleep(self, seconds):
        self.count += 1
        if self.on_poll:
            self.on_poll(self.count)
        if self.count >= self.limit:
            raise KeyboardInterrupt


def test_a_round_that_fails_the_same_way_stops_being_retried_until_asked(playground, monkeypatch):
    store = playground.store
    add_short_vs_long_votes(store, 4)
    tried, states = [], {}

    def failing_round(*args, **kwargs):
        tried.append(kwargs)
        raise RuntimeError("size mismatch for lora_A")

    def on_poll(n):
        states[n] = store.trainer_state()
        if n == 9:
            store.request_round(admin=True)

    polls = Polls(12, on_poll)
    monkeypatch.setattr(watch, "run_round", failing_round)
    monkeypatch.setattr(watch, "time", SimpleNamespace(sleep=polls.sleep))
    monkeypatch.setattr(watch.signal, "signal", lambda *args: None)
    with pytest.raises(KeyboardInterrupt):
        watch.watch(store, playground.data_set.adapters_dir, "unused", tiny_round(eval_tokens=0), poll_seconds=0)
    # Three tries, none for the next polls, one more on the admin's request (which fails the same way again).
    assert len(tried) == watch.SAME_FAILURE_LIMIT + 1
    assert [n for n in states if states[n]["state"] == "stuck"] == [4, 5, 6, 7, 8, 9, 11, 12]
    assert states[5]["failures"] == 3 and "size mismatch for lora_A" in states[5]["error"]
    assert len(store.pending_pairs()) == 4, "the feedback stays pending"


def test_a_vllm_server_started_here_takes_every_versions_rank(playground, tiny_models, tmp_path):
    from conftest import make_lora_adapter

    from playground.runtimes.vllm.server import lora_rank_limit
    from playground.serving import largest_lora_rank

    assert largest_lora_rank(playground.store, tiny_round(lora_r=8)) == 8, "no versions: the rounds' rank"
    publish(playground, make_lora_adapter(tiny_models["sft"], tmp_path / "r16", seed=1, r=16))
    publish(playground, make_lora_adapter(tiny_models["sft"], tmp_path / "r4", seed=2, r=4))
    assert largest_lora_rank(playground.store, tiny_round(lora_r=8)) == 16, "an earlier version of rank 16"
    assert lora_rank_limit(largest_lora_rank(playground.store, tiny_round(lora_r=8))) >= 16
