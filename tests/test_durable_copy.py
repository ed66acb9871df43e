"""The durable copy at the store level: every record reaches the target, an empty store is rebuilt from it with the
same ids, nothing is duplicated, a cut shard loses only its cut line, and a slow or failing target never blocks or
loses a vote. (tests/test_restart.py does the same through real app processes.)"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from helpers import DATA_TABLES, add_compare, add_short_vs_long_votes

from playground.store import Store, durable


def dump(store: Store) -> dict:
    """Every data row of every table, and the shared meta values (the local-only ones left out)."""
    conn = sqlite3.connect(store.path)
    out = {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}"))) for t in DATA_TABLES}
    out["meta"] = sorted(r for r in conn.execute("SELECT key, value FROM meta") if r[0] not in durable.LOCAL_META_KEYS)
    conn.close()
    return out


def fake_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    return folder


def a_round(store: Store, parent: int | None = None) -> int:
    """A finished round with steps and a version whose folder lies inside the data set."""
    pairs = [p["id"] for p in store.pending_pairs()]
    round_id = store.start_round(parent, pairs, {"beta": 0.1}, pid=os.getpid())
    for step in range(1, 4):
        store.log_step(round_id, step, {"loss": 0.7 - step / 10, "rewards/margins": step / 10, "epoch": 0.5})
        store.set_round_progress(round_id, step, 3)
    folder = fake_adapter(store.root / "adapters" / f"round-{round_id:04d}")
    return store.finish_round(round_id, folder, {"final_loss": float("nan")})


def busy_history(store: Store) -> None:
    """Every kind of record: comparisons, each vote kind, pairs, rounds with steps, two versions, a rollback,
    a version marked bad, a deleted meta key."""
    c, ids = add_compare(store, "Tell me about rivers.", {"base": "b", "sft": "s", "pref": "p"})
    store.vote_best("s1", c, [ids["pref"], ids["sft"], ids["base"]])
    store.vote_thumb("s1", ids["base"], up=False)
    c2, _ = add_compare(store, "Tell me about hills.", {"base": "x", "sft": "y", "pref": "z"}, session="s2")
    store.vote_all_bad("s2", c2)
    add_short_vs_long_votes(store, 4)
    v1 = a_round(store)
    add_short_vs_long_votes(store, 3, session="later")
    v2 = a_round(store, parent=v1)
    store.set_serving_version(v1)  # a rollback
    store.mark_version_bad(v2, "tests say so")
    store.request_round()
    store.take_round_request()
    failed = store.start_round(v1, [], {}, pid=os.getpid())
    store.fail_round(failed, "boom")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "local" / "datasets" / "ds")


def copy_of(store: Store, target: Path) -> durable.DurableCopy:
    return durable.DurableCopy(store, "ds", target)


def fresh_store(tmp_path, name="restored") -> Store:
    return Store.open(tmp_path / name / "datasets" / "ds")


def test_every_record_written_after_binding_is_restored_with_the_same_ids(store, tmp_path):
    target = tmp_path / "target"
    copy = copy_of(store, target)
    assert copy.bind() == "started"
    busy_history(store)
    assert copy.pending() > 0
    copy.copy_pending()
    assert copy.pending() == 0

    again = fresh_store(tmp_path)
    summary = durable.restore(again, copy.folder)
    assert summary["warnings"] == []
    assert dump(again) == dump(store)
    assert again.serving_version() == store.serving_version() == 1
    # the adapters are in place, at the paths the rows name, byte for byte
    for version in again.versions():
        original = store.version(version["version"])["path"]
        assert Path(version["path"]).is_relative_to(again.root)
        assert (Path(version["path"]) / "adapter_model.safetensors").read_bytes() == (
            Path(original) / "adapter_model.safetensors"
        ).read_bytes()


def test_binding_a_store_with_data_copies_what_it_already_holds(store, tmp_path):
    busy_history(store)  # written before any target existed: the triggers were not logging
    copy = copy_of(store, tmp_path / "target")
    assert copy.bind() == "started"
    again = fresh_store(tmp_path)
    durable.restore(again, copy.folder)
    assert dump(again) == dump(store)


def test_a_restored_store_continues_the_same_history_without_duplicates(store, tmp_path):
    target = tmp_path / "target"
    copy = copy_of(store, target)
    copy.bind()
    busy_history(store)
    copy.stop()

    restarted = fresh_store(tmp_path, "restart-1")
    first = copy_of(restarted, target)
    assert first.bind() == "restored"
    assert first.pending() == 0  # what was restored is not copied again
    add_short_vs_long_votes(restarted, 2, session="after-restart")  # ids continue after the restored ones
    first.stop()
    assert first.bind() == "continued"  # a second start with a full store adds nothing

    again = fresh_store(tmp_path, "restart-2")
    copy_of(again, target).bind()
    assert dump(again) == dump(restarted)
    assert again.counts()["votes"] == store.counts()["votes"] + 2


def test_a_shard_cut_mid_line_loses_only_that_line(store, tmp_path):
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    add_short_vs_long_votes(store, 5)
    copy.stop()
    [shard] = durable.shards(copy.folder)
    lines = shard.read_text().splitlines(keepends=True)
    last_vote = max(i for i, line in enumerate(lines) if '"table":"votes"' in line)
    cut = lines[last_vote][: len(lines[last_vote]) // 2]
    shard.write_text("".join(lines[:last_vote]) + cut)  # a crash while writing that line

    again = fresh_store(tmp_path)
    summary = durable.restore(again, copy.folder)
    assert len(summary["warnings"]) == 1 and "cut short" in summary["warnings"][0]
    assert again.counts()["votes"] == 4
    assert again.counts()["comparisons"] == 5


def test_a_failing_target_blocks_no_vote_and_loses_none(store, tmp_path, monkeypatch):
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    add_short_vs_long_votes(store, 2)
    copy.copy_pending()

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")  # the bucket mount went away

    monkeypatch.setattr(durable.copier.os, "fsync", broken_fsync)
    add_short_vs_long_votes(store, 3, session="during-outage")  # still committed locally
    with pytest.raises(OSError):
        copy.copy_pending()
    assert copy.pending() > 0  # nothing forgotten
    monkeypatch.undo()
    copy.copy_pending()  # the retry goes into a fresh shard: a half-written line cannot swallow the next record
    assert len(durable.shards(copy.folder)) == 2
    again = fresh_store(tmp_path)
    durable.restore(again, copy.folder)
    assert dump(again) == dump(store)


def test_votes_commit_while_the_copier_holds_its_lock(store, tmp_path):
    # A slow target holds the copier (and its lock); a vote must not wait for it.
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    release, entered = threading.Event(), threading.Event()
    real_append = copy._append

    def slow_append(records):
        entered.set()
        release.wait(30)
        real_append(records)

    copy._append = slow_append
    add_short_vs_long_votes(store, 1)
    worker = threading.Thread(target=copy.copy_pending)
    worker.start()
    assert entered.wait(10)
    add_short_vs_long_votes(store, 2, session="while-copying")  # returns although the copy is stuck
    assert store.counts()["votes"] == 3
    release.set()
    worker.join(30)
    copy.copy_pending()
    assert copy.pending() == 0


def test_a_store_is_never_mixed_into_another_history(store, tmp_path):
    target = tmp_path / "target"
    copy = copy_of(store, target)
    copy.bind()
    add_short_vs_long_votes(store, 2)
    copy.copy_pending()
    other = fresh_store(tmp_path, "someone-else")
    add_short_vs_long_votes(other, 1)
    with pytest.raises(durable.DurableCopyError, match="another history"):
        copy_of(other, target).bind()
    # also before the first record: a bound target with no shards yet is still someone's history
    empty_target = tmp_path / "empty-target"
    copy_of(fresh_store(tmp_path, "first"), empty_target).bind()
    with pytest.raises(durable.DurableCopyError, match="another history"):
        copy_of(other, empty_target).bind()


def test_restore_refuses_a_store_that_is_not_empty(store, tmp_path):
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    add_short_vs_long_votes(store, 1)
    copy.stop()
    with pytest.raises(durable.DurableCopyError, match="not empty"):
        durable.restore(store, copy.folder)


def test_the_target_holds_only_append_only_files(store, tmp_path):
    # What a CommitScheduler needs: every file, once it exists, only grows (earlier content is a prefix).
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    seen: dict[Path, bytes] = {}

    def check():
        for path in copy.target.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                if path in seen:
                    assert data.startswith(seen[path]), f"{path} was rewritten"
                seen[path] = data

    for _ in range(3):
        add_short_vs_long_votes(store, 2)
        a_round(store, parent=store.serving_version() or None)
        copy.copy_pending()
        check()
    assert not [p for p in copy.target.rglob("*") if p.name.startswith(durable.PARTIAL)]


def test_local_only_meta_never_leaves_the_machine(store, tmp_path):
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    store.set_trainer_state({"state": "waiting", "pairs": 3})
    add_short_vs_long_votes(store, 1)
    copy.copy_pending()
    text = "".join(p.read_text() for p in durable.shards(copy.folder))
    assert (
        '"trainer"' not in text
        and '"changes"' not in text
        and durable.META_KEY not in text.replace('"format":"alignment-playground-durable-copy"', "")
    )


def test_a_shard_from_a_newer_app_stops_the_restore(store, tmp_path):
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    add_short_vs_long_votes(store, 1)
    copy.stop()
    [shard] = durable.shards(copy.folder)
    lines = shard.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["header"]["store_schema"] = 999
    shard.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    with pytest.raises(durable.DurableCopyError, match="newer version"):
        durable.restore(fresh_store(tmp_path), copy.folder)


class FakeHubApi:
    """Stands in for huggingface_hub.HfApi, which cannot reach the Hub here: it keeps what CommitScheduler commits
    (each file's bytes per commit) and serves them back to snapshot_download. The scheduler itself is the real one."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.commits: list[dict[str, bytes]] = []
        self.created: list[dict] = []

    def create_repo(self, repo_id, private=None, repo_type=None, exist_ok=False):
        from types import SimpleNamespace

        self.created.append({"repo_id": repo_id, "private": private, "repo_type": repo_type})
        return SimpleNamespace(repo_id=repo_id)

    def run_as_future(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future

    def create_commit(self, repo_id, repo_type, operations, commit_message, revision=None):
        commit = {op.path_in_repo: op.path_or_fileobj.read() for op in operations}
        self.commits.append(commit)
        self.files.update(commit)

    def snapshot_download(self, repo_id, repo_type, allow_patterns, local_dir):
        import fnmatch

        for name, data in self.files.items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                path = Path(local_dir) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        return str(local_dir)


def test_the_dataset_repo_gets_append_only_uploads_and_restores(store, tmp_path):
    api = FakeHubApi()
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    scheduler = durable.start_hub_scheduler("me/votes", copy.target, every_minutes=60, api=api)
    try:
        assert api.created == [{"repo_id": "me/votes", "private": True, "repo_type": "dataset"}]
        for i in range(3):
            add_short_vs_long_votes(store, 2, session=f"s{i}")
            a_round(store, parent=store.serving_version() or None)
            copy.copy_pending()
            scheduler.trigger().result()
    finally:
        scheduler.stop()
    uploaded = [name for commit in api.commits for name in commit]
    assert any(name.endswith(".jsonl") for name in uploaded)
    assert any(name.endswith("adapter_model.safetensors") for name in uploaded)
    assert not [n for n in uploaded if durable.PARTIAL in n]
    # every later upload of a file extends the earlier one: what the scheduler's partial reads rely on
    last: dict[str, bytes] = {}
    for commit in api.commits:
        for name, data in commit.items():
            assert data.startswith(last.get(name, b"")), f"{name} was rewritten between commits"
            last[name] = data

    folder = durable.download_hub_copy("me/votes", "ds", tmp_path / "download", api=api)
    again = fresh_store(tmp_path)
    restored = copy_of(again, tmp_path / "empty-local-target")
    assert restored.bind(restore_from=folder) == "restored"
    assert dump(again) == dump(store)
    # the local target continues the repo's history: the next start just continues
    assert restored.bind() == "continued"


def test_an_unreadable_dataset_repo_stops_the_start(tmp_path):
    from huggingface_hub.errors import RepositoryNotFoundError

    class Missing(FakeHubApi):
        def snapshot_download(self, **kwargs):
            import httpx

            raise RepositoryNotFoundError(
                "404 Repository Not Found",
                response=httpx.Response(
                    404, request=httpx.Request("GET", "https://huggingface.co/api/datasets/me/new")
                ),
            )

    class Unreachable(FakeHubApi):
        def snapshot_download(self, **kwargs):
            raise ConnectionError("no route to huggingface.co")

    assert durable.download_hub_copy("me/new", "ds", tmp_path / "a", api=Missing()) is None  # a first start
    with pytest.raises(durable.DurableCopyError, match="Not starting with an empty store"):
        durable.download_hub_copy("me/votes", "ds", tmp_path / "b", api=Unreachable())


def test_restore_and_stats_from_the_command_line(tiny_models, tmp_path, capsys):
    from playground import cli
    from playground.data_sets import DataSet

    models = ["--base", str(tiny_models["base"]), "--sft", str(tiny_models["sft"])]
    source = DataSet.for_models(tmp_path / "old-machine", str(tiny_models["base"]), str(tiny_models["sft"]))
    store = source.open_store()
    busy_history(store)
    copy = durable.DurableCopy(store, source.name, tmp_path / "bucket")
    copy.bind()
    copy.stop()

    assert cli.main(["stats", "--json", *models, "--data-dir", str(tmp_path / "old-machine")]) == 0
    old = json.loads(capsys.readouterr().out)
    assert old["votes"] == 10 and old["serving_version"] == 1 and old["versions"] == 2

    new = ["--data-dir", str(tmp_path / "new-machine")]
    assert cli.main(["restore", "--from", str(tmp_path / "bucket"), *models, *new]) == 0
    assert "serving v1" in capsys.readouterr().out
    assert cli.main(["stats", "--json", *models, *new]) == 0
    restored = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in restored.items() if k != "durable_copy"} == old

    assert cli.main(["restore", "--from", str(tmp_path / "bucket"), *models, *new]) == 2  # not into a full store
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["restore", "--from", str(tmp_path / "nowhere"), *models, "--data-dir", str(tmp_path / "x")]) == 2
    assert "holds no durable copy" in capsys.readouterr().err


def test_a_broken_target_shows_on_the_status_line_and_the_copy_recovers(store, tmp_path):
    import time

    from playground.ui.status import durable_copy_note

    target = tmp_path / "target"
    copy = copy_of(store, target)
    copy.bind()
    assert durable_copy_note(copy.status()) == f" · durable copy `{target}`"  # quiet while it keeps up

    records = copy.folder / durable.RECORDS
    shutil.rmtree(records, ignore_errors=True)
    records.write_text("not a folder")  # the mount went bad: no shard can be created
    copy.start(interval=0.05)
    try:
        add_short_vs_long_votes(store, 2)  # committed locally all the same
        deadline = time.monotonic() + 20
        while copy.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        note = durable_copy_note(copy.status())
        assert "durable copy lags" in note and "changes not copied yet" in note and "votes are safe" in note
        records.unlink()  # the mount is back
        deadline = time.monotonic() + 40
        while (copy.pending() or copy.last_error) and time.monotonic() < deadline:
            copy.wake()
            time.sleep(0.05)
        assert copy.pending() == 0 and copy.last_error is None
    finally:
        copy.stop()
    again = fresh_store(tmp_path)
    durable.restore(again, copy.folder)
    assert dump(again) == dump(store)


def test_a_reward_model_written_after_its_version_reaches_the_copy_and_is_restored(store, tmp_path):
    """A dpo round's reward model lands in its version's folder after the version is published (and after the copy
    took the folder): recording its figures brings it into the copy too."""
    copy = copy_of(store, tmp_path / "target")
    copy.bind()
    add_short_vs_long_votes(store, 4)
    version = a_round(store)
    copy.copy_pending()  # the version's folder is copied, without a reward model yet
    folder = Path(store.version(version)["path"])
    fake_adapter(folder / "reward_model")
    store.set_reward_model(version, {"pairs": 4, "accuracy_train": 1.0})
    copy.copy_pending()
    again = fresh_store(tmp_path)
    durable.restore(again, copy.folder)
    restored = Path(again.version(version)["path"]) / "reward_model"
    assert (restored / "adapter_model.safetensors").read_bytes() == (
        folder / "reward_model" / "adapter_model.safetensors"
    ).read_bytes()
    assert again.version(version)["metrics"]["reward_model"] == {"pairs": 4, "accuracy_train": 1.0}
