"""Data sets: the votes, pairs and adapters of one pair of models never reach another pair."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from helpers import add_compare, add_short_vs_long_votes

from playground.core import Playground
from playground.data_sets import DataSet, legacy_store, list_data_sets, model_identity
from playground.settings import ModelSettings

ROOT = Path(__file__).resolve().parent.parent


def test_each_pair_of_models_has_its_own_data_set_and_switching_back_finds_it(tmp_path):
    first = DataSet.for_models(tmp_path, "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct")
    add_short_vs_long_votes(first.open_store(), 3)
    other_sft = DataSet.for_models(tmp_path, "HuggingFaceTB/SmolLM2-135M", "Qwen/Qwen2.5-0.5B-Instruct")
    other_base = DataSet.for_models(tmp_path, "Qwen/Qwen2.5-0.5B", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert len({first.root, other_sft.root, other_base.root}) == 3
    for other in (other_sft, other_base):
        store = other.open_store()
        assert store.counts()["votes"] == 0 and store.pending_pairs() == [], "no votes of other models"
    again = DataSet.for_models(tmp_path, "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert again.root == first.root and again.open_store().counts()["votes"] == 3
    assert first.name.startswith("smollm2-135m-instruct__smollm2-135m-")
    listed = {d["name"]: d for d in list_data_sets(tmp_path)}
    assert listed[first.name]["votes"] == 3 and listed[other_sft.name]["votes"] == 0
    assert listed[first.name]["sft"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_local_model_is_known_by_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "models")
    assert (
        model_identity("mine") == model_identity(str(tmp_path / "models" / "mine")) == str(tmp_path / "models" / "mine")
    )
    assert model_identity("embedded:smollm2-135m-instruct") == "embedded:smollm2-135m-instruct"


def test_a_switch_of_models_never_loads_the_other_models_adapter(tiny_models, tiny_adapters, tmp_path):
    """A version trained for one SFT model exists in its data set only; the other model starts at version 0."""
    models = ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(tmp_path))
    first = Playground(models)
    run = first.store.start_round(0, [], {}, pid=None)
    first.store.finish_round(run, tiny_adapters[1], {})
    assert first.store.serving_version() == 1

    swapped = Playground(
        ModelSettings(base=str(tiny_models["sft"]), sft=str(tiny_models["base"]), data_dir=str(tmp_path))
    )
    assert swapped.data_set.root != first.data_set.root
    assert swapped.store.serving_version() == 0 and swapped.store.versions() == []
    back = Playground(models)
    assert back.store.serving_version() == 1 and back.store.version(1)["path"] == str(tiny_adapters[1])


def legacy_data_dir(tmp_path: Path, models: dict[str, str]) -> Path:
    """A data directory as written before data sets: the store and adapters at its top."""
    from playground.store import Store

    data_dir = tmp_path / "legacy"
    store = Store(data_dir / "playground.sqlite3")
    cid, ids = add_compare(store, "Old question?", {"base": "b", "sft": "s", "pref": "p"})
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:  # answers record the models that wrote them
        conn.execute("UPDATE answers SET model = ? WHERE arm = 'base'", (models["base"],))
        conn.execute("UPDATE answers SET model = ? WHERE arm <> 'base'", (models["sft"] + " (int8)",))
    store.vote_best("s", cid, [ids["sft"]])
    adapter = data_dir / "adapters" / "round-0001"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    run = store.start_round(0, [p["id"] for p in store.pending_pairs()], {}, pid=None)
    store.finish_round(run, adapter, {})
    with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:  # the old code stored absolute paths
        conn.execute("UPDATE adapter_versions SET path = ?", (str(adapter),))
    (data_dir / "trainer.log").write_text("old log\n")
    return data_dir


def test_a_store_from_before_data_sets_moves_into_the_data_set_of_the_models_that_wrote_it(tmp_path):
    data_dir = legacy_data_dir(tmp_path, {"base": "gemma-3-270m", "sft": "smollm2-135m-instruct"})
    other = DataSet.for_models(data_dir, "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert other.open_store().counts()["votes"] == 0, "other models do not take it"
    assert legacy_store(data_dir)["votes"] == 1

    mine = DataSet.for_models(data_dir, "embedded:gemma-3-270m", "embedded:smollm2-135m-instruct")
    assert not (data_dir / "playground.sqlite3").exists() and legacy_store(data_dir) is None
    store = mine.open_store()
    assert store.counts()["votes"] == 1 and store.serving_version() == 1
    assert store.version(1)["path"] == str(mine.adapters_dir / "round-0001")
    assert (mine.adapters_dir / "round-0001" / "adapter_config.json").exists()
    assert mine.trainer_log.read_text() == "old log\n"
    with contextlib.closing(sqlite3.connect(mine.store_path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_store_from_before_data_sets_that_is_in_use_stays_until_it_is_free(tmp_path):
    data_dir = legacy_data_dir(tmp_path, {"base": "gemma-3-270m", "sft": "smollm2-135m-instruct"})
    with contextlib.closing(sqlite3.connect(data_dir / "playground.sqlite3")) as busy:
        busy.execute("BEGIN IMMEDIATE")  # an old app still writing
        mine = DataSet.for_models(data_dir, "embedded:gemma-3-270m", "embedded:smollm2-135m-instruct")
        assert (data_dir / "playground.sqlite3").exists() and not mine.store_path.exists()
        busy.execute("ROLLBACK")
    mine = DataSet.for_models(data_dir, "embedded:gemma-3-270m", "embedded:smollm2-135m-instruct")
    assert mine.open_store().counts()["votes"] == 1


def test_info_names_the_data_set_and_the_others(tiny_models, tmp_path):
    shutil.copytree(tiny_models["sft"], tmp_path / "other-sft")
    common = ["--base", str(tiny_models["base"]), "--data-dir", str(tmp_path)]
    add_short_vs_long_votes(
        Playground(
            ModelSettings(base=str(tiny_models["base"]), sft=str(tmp_path / "other-sft"), data_dir=str(tmp_path))
        ).store,
        2,
    )
    result = subprocess.run(
        [sys.executable, "-m", "playground", "-q", "info", "--json", "--sft", str(tiny_models["sft"]), *common],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["data_set"]["votes"] == 0 and facts["data_set"]["name"].startswith("sft__base-")
    others = [d for d in facts["data_sets"] if d["name"] != facts["data_set"]["name"]]
    assert [(d["votes"], d["sft"]) for d in others] == [(2, str(tmp_path / "other-sft"))]
