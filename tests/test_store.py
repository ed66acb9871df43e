import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import DATA_TABLES, newest_ready, pragmas

from playground.processes import pid_alive
from playground.store import Store, StoreError, VoteError
from playground.store import migrations as store_module
from playground.store import records as records_module

TABLES = (*DATA_TABLES, "meta")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "db.sqlite3")


def make_comparison(
    store, texts=("Paris.", "Lyon.", "I don't know."), prompt="Capital of France?", session="s1", mode="compare"
):
    answers = [
        {
            "arm": arm,
            "text": text,
            "model": "tiny",
            "adapter_version": 2 if arm == "pref" else 0,
            "settings": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64},
            "seed": slot,
            "prompt_tokens": 5,
            "new_tokens": 3,
            "seconds": 0.1,
            "ttft": 0.01,
            "finish_reason": "stop",
        }
        for slot, (arm, text) in enumerate(zip(("base", "sft", "pref"), texts))
    ]
    return store.add_comparison(prompt, session, mode=mode, category="facts", answers=answers)


def table_counts(store):
    with sqlite3.connect(store.path) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def integrity(path):
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# -- setup ----------------------------------------------------------------------------------------------


def test_wal_foreign_keys_and_durable_sync(store):
    with sqlite3.connect(store.path) as raw:  # WAL is a property of the file, not of our connections
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    p = pragmas(store)
    assert p["journal_mode"] == "wal"
    assert p["foreign_keys"] == 1
    assert p["synchronous"] == 2  # FULL
    assert p["busy_timeout"] >= 30000
    assert p["user_version"] == len(store_module.MIGRATIONS)
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced, not just declared
        store.log_step(999, 1, {"loss": 0.5})  # a step of a round that does not exist


def test_open_uses_data_dir(tmp_path):
    s = Store.open(tmp_path / "data")
    assert s.path == tmp_path / "data" / "playground.sqlite3" and s.path.exists()


def test_comparison_roundtrip(store):
    cid, ids = make_comparison(store)
    c = store.comparison(cid)
    assert (c["prompt"], c["category"], c["session_id"], c["mode"]) == ("Capital of France?", "facts", "s1", "compare")
    assert [a["id"] for a in c["answers"]] == ids
    assert [a["arm"] for a in c["answers"]] == ["base", "sft", "pref"]
    a = store.answer(ids[2])
    assert a["settings"] == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64}
    assert (a["adapter_version"], a["seed"], a["ttft"], a["finish_reason"]) == (2, 2, 0.01, "stop")
    assert store.comparison(999) is None and store.answer(999) is None
    make_comparison(store)  # same prompt again: one prompt row, two comparisons
    assert store.counts()["prompts"] == 1 and store.counts()["comparisons"] == 2


# -- votes and pairs ------------------------------------------------------------------------------------


def test_vote_best_full_ranking(store):
    cid, (a, b, c) = make_comparison(store)
    receipt = store.vote_best("s1", cid, [c, a, b])
    assert (receipt.kind, receipt.pairs_created) == ("best", 3)
    assert "3 training pairs" in receipt.message
    got = [(p["chosen_answer_id"], p["rejected_answer_id"]) for p in store.pending_pairs()]
    assert got == [(c, a), (c, b), (a, b)]
    p = store.pending_pairs(limit=1)[0]
    assert p["prompt_text"] == "Capital of France?"
    assert (p["chosen_text"], p["chosen_arm"], p["chosen_adapter_version"]) == ("I don't know.", "pref", 2)
    assert (p["rejected_text"], p["rejected_arm"], p["rejected_adapter_version"]) == ("Paris.", "base", 0)
    assert p["vote_kind"] == "best" and p["vote_id"] == receipt.vote_id and p["round_id"] is None


def test_vote_best_only_winner(store):
    cid, (a, b, c) = make_comparison(store)
    assert store.vote_best("s1", cid, [b]).pairs_created == 2
    assert [(p["chosen_answer_id"], p["rejected_answer_id"]) for p in store.pairs()] == [(b, a), (b, c)]


def test_identical_texts_make_no_pair(store):
    cid, (a, b, c) = make_comparison(store, texts=("Same.", " Same.\n", "Other."))
    r = store.vote_best("s1", cid, [a])
    assert r.pairs_created == 1 and "1 training pair" in r.message
    cid2, (a2, b2, _) = make_comparison(store, texts=("Same.", "Same.", "Other."))
    r = store.vote_pairwise("s1", cid2, a2, b2, "a")
    assert r.pairs_created == 0 and "identical" in r.message
    assert store.counts()["votes"] == 2  # still recorded


@pytest.mark.parametrize("outcome, pairs", [("a", 1), ("b", 1), ("tie", 0), ("both_bad", 0)])
def test_vote_pairwise(store, outcome, pairs):
    cid, (a, b, _) = make_comparison(store, mode="duel")
    r = store.vote_pairwise("s1", cid, a, b, outcome)
    assert r.pairs_created == pairs
    if outcome in ("a", "b"):
        winner, loser = (a, b) if outcome == "a" else (b, a)
        assert [(p["chosen_answer_id"], p["rejected_answer_id"]) for p in store.pairs()] == [(winner, loser)]


def test_all_bad_and_thumbs_record_votes_without_pairs(store):
    cid, (a, b, c) = make_comparison(store)
    assert store.vote_all_bad("s1", cid).pairs_created == 0
    up = store.vote_thumb("s1", a, True)
    assert up.pairs_created == 0 and "up" in up.message
    store.vote_thumb("s1", b, False)
    store.vote_thumb("s2", a, False)  # another session may rate the same answer
    counts = store.counts()
    assert counts["votes_by_kind"] == {"best": 0, "all_bad": 1, "pairwise": 0, "thumb": 3, "correction": 0}
    assert counts["votes"] == 4 and counts["pairs"] == 0


def test_other_sessions_may_vote_on_the_same_comparison(store):
    cid, (a, b, c) = make_comparison(store)
    store.vote_best("s1", cid, [a])
    store.vote_best("s2", cid, [b])
    store.vote_pairwise("s1", cid, a, b, "tie")  # a different kind by the same session is fine
    assert store.counts()["votes"] == 3


REFUSALS = {
    "unknown comparison": lambda s, cid, ids, other: s.vote_best("s1", 999, [ids[0]]),
    "unknown answer": lambda s, cid, ids, other: s.vote_best("s1", cid, [999]),
    "answer from another comparison": lambda s, cid, ids, other: s.vote_best("s1", cid, [other[0]]),
    "pairwise answer from another comparison": lambda s, cid, ids, other: s.vote_pairwise(
        "s1", cid, ids[0], other[1], "a"
    ),
    "duplicate in ranking": lambda s, cid, ids, other: s.vote_best("s1", cid, [ids[0], ids[0], ids[1]]),
    "partial ranking": lambda s, cid, ids, other: s.vote_best("s1", cid, [ids[0], ids[1]]),
    "empty ranking": lambda s, cid, ids, other: s.vote_best("s1", cid, []),
    "double best vote": lambda s, cid, ids, other: s.vote_best("voted", cid, [ids[1]]),
    "all bad after best": lambda s, cid, ids, other: s.vote_all_bad("voted", cid),
    "double pairwise vote": lambda s, cid, ids, other: s.vote_pairwise("voted", cid, ids[1], ids[2], "b"),
    "double thumb": lambda s, cid, ids, other: s.vote_thumb("voted", ids[0], False),
    "bad outcome": lambda s, cid, ids, other: s.vote_pairwise("s1", cid, ids[0], ids[1], "c"),
    "pairwise with itself": lambda s, cid, ids, other: s.vote_pairwise("s1", cid, ids[0], ids[0], "a"),
    "thumb on unknown answer": lambda s, cid, ids, other: s.vote_thumb("s1", 999, True),
    "no session": lambda s, cid, ids, other: s.vote_all_bad("", cid),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_votes_write_nothing(store, case):
    cid, ids = make_comparison(store)
    _, other = make_comparison(store, prompt="Capital of Italy?")
    store.vote_best("voted", cid, [ids[0]])
    store.vote_pairwise("voted", cid, ids[0], ids[1], "a")
    store.vote_thumb("voted", ids[0], True)
    before = table_counts(store)
    with pytest.raises(VoteError) as err:
        REFUSALS[case](store, cid, ids, other)
    message = str(err.value)
    assert message[0].isupper() and message.endswith(".")  # a sentence a person can read
    assert table_counts(store) == before


# -- durability -----------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, sys, time
    from playground.store import Store
    store = Store(sys.argv[1])
    name, cid, n, go = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    ids = [a["id"] for a in store.comparison(cid)["answers"]]
    print("ready", flush=True)
    while not os.path.exists(go):  # start together, so the writers really contend
        time.sleep(0.005)
    for i in range(n):
        receipt = store.vote_best(f"{name}-{i}", cid, ids[i % 3:] + ids[:i % 3])
        print(receipt.vote_id, flush=True)  # acknowledged only after the commit returned
""")


def start_writers(db, cid, n, names):
    """Writer processes, released together once all are ready."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    go = Path(db).with_name("go")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), name, str(cid), str(n), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in names
    ]
    for proc in procs:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    go.touch()
    return procs


def test_concurrent_writer_processes(store):
    cid, _ = make_comparison(store)
    procs = start_writers(store.path, cid, 50, [f"w{k}" for k in range(4)])
    acked = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        acked += [int(line) for line in out.split()]
    assert len(acked) == len(set(acked)) == 200
    counts = store.counts()
    assert counts["votes"] == 200 and counts["pairs"] == 600
    with sqlite3.connect(store.path) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM votes")}
        assert conn.execute("SELECT count(*) FROM vote_answers").fetchone()[0] == 600
        writers = [r[0].split("-")[0] for r in conn.execute("SELECT session_id FROM votes ORDER BY id")]
    assert stored == set(acked)
    assert sum(x != y for x, y in zip(writers, writers[1:])) > 3  # writes interleaved, not queued per process
    assert integrity(store.path) == "ok"


def test_threads_share_one_store(store):
    cid, ids = make_comparison(store)
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(lambda i: store.vote_thumb(f"t{i}", ids[i % 3], i % 2 == 0), range(80)))
    assert len({r.vote_id for r in receipts}) == 80 == store.counts()["votes_by_kind"]["thumb"]


def test_killed_writer_loses_no_acknowledged_vote(store):
    cid, ids = make_comparison(store)
    (proc,) = start_writers(store.path, cid, 100_000, ["doomed"])
    acked = []
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) == 40:
            os.kill(proc.pid, signal.SIGKILL)
            break
    rest, _ = proc.communicate(timeout=30)
    acked += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(store.path) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM votes")}
        # every vote is whole: its answers and pairs came with it or not at all
        assert conn.execute("SELECT count(*) FROM vote_answers").fetchone()[0] == 3 * len(stored)
        assert conn.execute("SELECT count(*) FROM pairs").fetchone()[0] == 3 * len(stored)
    assert set(acked) <= stored
    assert integrity(store.path) == "ok"
    after = Store(store.path).vote_best("survivor", cid, [ids[0]])
    assert after.vote_id in {r["vote_id"] for r in store.export_votes()}


# -- rounds and versions --------------------------------------------------------------------------------


def voted_pairs(store, n_comparisons=2):
    for i in range(n_comparisons):
        cid, ids = make_comparison(store, prompt=f"Prompt {i}?")
        store.vote_best("s1", cid, [ids[0]])
    return [p["id"] for p in store.pending_pairs()]


def test_round_finishes_into_version_one(store):
    pair_ids = voted_pairs(store)
    rid = store.start_round(0, pair_ids, {"beta": 0.1, "lr": 5e-6}, pid=os.getpid())
    store.log_step(
        rid,
        1,
        {
            "loss": 0.69,
            "rewards/margins": 0.0,
            "rewards/accuracies": 0.5,
            "rewards/chosen": 0.01,
            "rewards/rejected": -0.01,
            "learning_rate": 5e-6,
            "grad_norm": 1.5,
            "epoch": 0.5,
        },
    )
    store.log_step(rid, 2, {"loss": float("nan")})
    store.log_step(rid, 2, {"eval_loss": 0.6})  # a second log at the same step merges
    v = store.finish_round(rid, "/adapters/v1", {"train_loss": 0.5})
    assert v == 1 and store.serving_version() == 1 and newest_ready(store) == 1
    assert store.pending_pairs() == []
    assert {p["round_id"] for p in store.pairs()} == {rid}
    (rnd,) = store.rounds()
    assert (rnd["status"], rnd["version"], rnd["parent_version"], rnd["pairs_used"]) == ("done", 1, None, 4)
    assert rnd["hyperparams"] == {"beta": 0.1, "lr": 5e-6} and rnd["finished_at"] >= rnd["started_at"]
    s1, s2 = store.round_steps(rid)
    assert (s1["loss"], s1["reward_margin"], s1["reward_accuracy"]) == (0.69, 0.0, 0.5)
    assert (s1["chosen_reward"], s1["rejected_reward"], s1["learning_rate"]) == (0.01, -0.01, 5e-6)
    assert s1["extra"] == {"grad_norm": 1.5, "epoch": 0.5}
    assert s2["extra"] == {"eval_loss": 0.6}
    (ver,) = store.versions()
    assert (ver["version"], ver["round_id"], ver["path"], ver["state"], ver["serving"]) == (
        1,
        rid,
        "/adapters/v1",
        "ready",
        True,
    )
    assert ver["metrics"] == {"train_loss": 0.5} and ver["pairs_used"] == 4

    # the next round builds on version 1 and only consumes new pairs
    new = voted_pairs(store, 1)
    rid2 = store.start_round(1, new, {}, pid=None)
    assert store.finish_round(rid2, "/adapters/v2", {}) == 2
    assert store.version(2)["parent_version"] == 1 and store.serving_version() == 2
    counts = store.counts()
    assert (counts["rounds"], counts["versions"], counts["pairs_pending"]) == (2, 2, 0)


def test_failed_round_leaves_pairs_pending_and_serving_unchanged(store):
    pair_ids = voted_pairs(store)
    rid = store.start_round(0, pair_ids, {}, pid=1)
    store.fail_round(rid, "CUDA out of memory")
    store.fail_round(rid, "again")  # no-op: the first error is the one worth keeping
    (rnd,) = store.rounds()
    assert (rnd["status"], rnd["error"], rnd["version"]) == ("failed", "CUDA out of memory", None)
    assert [p["id"] for p in store.pending_pairs()] == pair_ids
    assert store.serving_version() == 0 and store.versions() == []
    with pytest.raises(StoreError, match="already failed"):
        store.finish_round(rid, "/adapters/late", {})
    with pytest.raises(StoreError, match="does not exist"):
        store.start_round(7, pair_ids, {}, pid=1)
    with pytest.raises(StoreError, match="do not exist"):
        store.start_round(0, [999], {}, pid=1)


def test_recover_interrupted_rounds(store):
    pair_ids = voted_pairs(store)
    rid_v1 = store.start_round(0, pair_ids, {}, pid=10)
    store.finish_round(rid_v1, "/adapters/v1", {})
    more = voted_pairs(store, 1)
    alive = store.start_round(1, more, {}, pid=111)
    dead = store.start_round(1, more, {}, pid=222)
    recovered = store.recover_interrupted_rounds(is_alive=lambda pid: pid == 111)
    assert [(r["id"], r["status"], r["error"]) for r in recovered] == [(dead, "failed", "interrupted")]
    assert {r["id"]: r["status"] for r in store.rounds()} == {rid_v1: "done", alive: "running", dead: "failed"}
    assert [p["id"] for p in store.pending_pairs()] == more and store.serving_version() == 1
    assert pid_alive(os.getpid()) and not pid_alive(None)


def make_versions(store, n):
    parent = 0
    for i in range(n):
        cid, ids = make_comparison(store, prompt=f"Round {i}?")
        store.vote_best("s1", cid, [ids[0]])
        rid = store.start_round(parent, [p["id"] for p in store.pending_pairs()], {}, pid=None)
        parent = store.finish_round(rid, f"/adapters/v{i + 1}", {})


def test_rollback(store):
    make_versions(store, 2)
    store.set_serving_version(1)
    assert store.serving_version() == 1 and [v["serving"] for v in store.versions()] == [True, False]
    store.set_serving_version(0)
    assert store.serving_version() == 0
    with pytest.raises(StoreError, match="does not exist"):
        store.set_serving_version(3)
    store.mark_version_bad(2, "talks like a pirate")
    with pytest.raises(StoreError, match="marked bad"):
        store.set_serving_version(2)
    assert store.serving_version() == 0


def test_mark_bad_falls_back(store):
    make_versions(store, 3)
    assert store.serving_version() == 3
    assert store.mark_version_bad(2, "regressed") == 3  # not serving: nothing moves
    assert store.mark_version_bad(3, "repeats itself") == 1  # skips bad version 2
    assert store.serving_version() == 1 and newest_ready(store) == 1
    assert store.version(3)["state"] == "bad" and store.version(3)["reason"] == "repeats itself"
    assert store.mark_version_bad(1, "worse than base") == 0
    assert newest_ready(store) == 0 and store.version(9) is None
    with pytest.raises(StoreError):
        store.mark_version_bad(9, "no such version")


# -- hooks on commit -------------------------------------------------------------------------------------


def test_a_commit_hook_runs_after_a_vote_is_committed(store):
    cid, ids = make_comparison(store)
    seen = []
    store.on_commit(lambda: seen.append(store.counts()["votes"]))  # runs after COMMIT: the vote is visible
    store.vote_best("s1", cid, [ids[0]])
    assert seen == [1]


def test_a_commit_hook_does_not_run_when_the_write_rolls_back(store):
    cid, ids = make_comparison(store)
    seen = []
    store.on_commit(lambda: seen.append(True))
    with pytest.raises(VoteError):
        store.vote_best("s1", cid, [ids[0], ids[0]])  # refused inside the transaction
    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
        raise RuntimeError("the block fails")
    with store.read() as conn:
        assert store.meta(conn, "x") is None
    assert seen == []


def test_a_failing_commit_hook_loses_no_vote(store, caplog):
    cid, ids = make_comparison(store)
    seen = []

    def broken():
        raise OSError("the hook's target is gone")

    store.on_commit(broken)
    store.on_commit(lambda: seen.append(True))  # later hooks still run
    receipt = store.vote_best("s1", cid, [ids[0]])
    assert receipt.pairs_created == 2 and store.counts()["votes"] == 1 and seen == [True]
    assert "commit hook" in caplog.text and "the hook's target is gone" in caplog.text


# -- migrations -----------------------------------------------------------------------------------------


def test_fresh_file_at_version_zero_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite3"
    sqlite3.connect(path).close()  # an empty database: user_version 0
    s = Store(path)
    assert pragmas(s)["user_version"] == len(store_module.MIGRATIONS)
    assert s.counts()["votes"] == 0


def test_older_schema_is_migrated_keeping_data(tmp_path, monkeypatch):
    path = tmp_path / "db.sqlite3"
    old = Store(path)
    cid, ids = make_comparison(old)
    old.vote_best("s1", cid, [ids[0]])
    newer = store_module.MIGRATIONS + [
        store_module.Migration(
            "prompt_language", "ALTER TABLE prompts ADD COLUMN language TEXT;\nUPDATE prompts SET language = 'en';"
        )
    ]
    monkeypatch.setattr(store_module, "MIGRATIONS", newer)
    s = Store(path)
    assert pragmas(s)["user_version"] == len(newer)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT language FROM prompts").fetchall() == [("en",)]
    assert s.counts()["pairs"] == 2 and s.comparison(cid)["answers"][0]["id"] == ids[0]


def test_failed_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "db.sqlite3"
    Store(path)
    version = len(store_module.MIGRATIONS)
    monkeypatch.setattr(
        store_module,
        "MIGRATIONS",
        store_module.MIGRATIONS
        + [
            store_module.Migration(
                "half_done", "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"
            )
        ],
    )
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone()[0] == 0


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "db.sqlite3"
    Store(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(store_module.MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store(path)


# -- exports and stats ----------------------------------------------------------------------------------


def test_export_pairs_loads_with_datasets(store, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets  # a requirement (trl needs it): missing, this fails rather than skips

    cid, (a, b, c) = make_comparison(store, texts=("Paris.", "Lyon, naïvement.", "Nope."))
    store.vote_best("s1", cid, [a, b, c])
    path = tmp_path / "pairs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in store.export_pairs():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert sorted(ds.column_names) == ["chosen", "prompt", "rejected"]
    assert len(ds) == 3
    assert ds[0]["prompt"] == [{"role": "user", "content": "Capital of France?"}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": "Lyon, naïvement."}]
    assert ds[2]["chosen"][0]["content"] == "Lyon, naïvement."


def test_export_pairs_pages_through_everything(store, monkeypatch):
    monkeypatch.setattr(records_module, "_EXPORT_BATCH", 2)
    voted_pairs(store, 3)
    assert len(list(store.export_pairs())) == 6 and len(list(store.export_votes())) == 3


def test_export_votes(store):
    cid, (a, b, c) = make_comparison(store)
    store.vote_best("s1", cid, [c])
    store.vote_all_bad("s2", cid)
    store.vote_pairwise("s1", cid, b, a, "b")
    store.vote_thumb("s3", a, False)
    best, all_bad, duel, thumb = store.export_votes()
    assert (best["kind"], best["session_id"], best["outcome"], best["prompt"]) == (
        "best",
        "s1",
        None,
        "Capital of France?",
    )
    assert [(x["answer_id"], x["position"]) for x in best["answers"]] == [(c, 0), (a, None), (b, None)]
    first = best["answers"][0]
    assert (first["arm"], first["model"], first["adapter_version"], first["seed"], first["text"]) == (
        "pref",
        "tiny",
        2,
        2,
        "I don't know.",
    )
    assert first["settings"]["temperature"] == 0.7 and isinstance(best["created_at"], float)
    assert all(x["position"] is None for x in all_bad["answers"])
    assert [(x["answer_id"], x["position"]) for x in duel["answers"][:2]] == [(b, 0), (a, 1)]
    assert duel["outcome"] == "b"
    assert (thumb["outcome"], thumb["answers"][0]["answer_id"], thumb["answers"][0]["position"]) == ("down", a, 0)


def test_a_rollback_during_a_round_survives_the_round(store):
    make_versions(store, 1)  # v1 serves
    more = voted_pairs(store, 1)
    rid = store.start_round(1, more, {}, pid=None)  # a round warm-starting from v1
    store.set_serving_version(0)  # an admin rolls back while it trains
    assert store.finish_round(rid, "/adapters/v2", {}) == 2
    assert store.serving_version() == 0, "the admin's choice stands"
    v2 = store.version(2)
    assert (v2["serving"], v2["served_on_publish"], v2["state"]) == (False, 0, "ready")
    store.set_serving_version(2)  # rolling forward serves it
    assert store.serving_version() == 2

    # Without a rollback the new version serves as before, including the first round from no adapter.
    rid = store.start_round(2, voted_pairs(store, 1), {}, pid=None)
    assert store.finish_round(rid, "/adapters/v3", {}) == 3 and store.serving_version() == 3
    assert store.version(3)["served_on_publish"] == 1


def test_a_comparison_and_its_answers_are_one_transaction(store):
    good = {"arm": "base", "text": "fine", "model": "m"}
    with pytest.raises(ValueError, match="arm must be one of"):
        store.add_comparison("Q?", "s", answers=[good, {"arm": "nobody", "text": "x", "model": "m"}])
    with pytest.raises(sqlite3.IntegrityError):  # fails inside the transaction: the third answer has no text
        store.add_comparison("Q?", "s", answers=[good, good, {"arm": "pref", "text": None, "model": "m"}])
    assert table_counts(store) == dict.fromkeys(TABLES, 0) | {"meta": table_counts(store)["meta"]}


def test_the_change_counter_counts_transactions_that_changed_something(store):
    start = store.changes()
    cid, ids = make_comparison(store)
    assert store.changes() == start + 1
    store.take_round_request()  # deletes nothing: no change
    store.pending_pairs()
    with pytest.raises(VoteError):
        store.vote_best("s1", cid, [999])  # refused: rolled back, no change
    assert store.changes() == start + 1
    store.vote_best("s1", cid, [ids[0]])
    assert store.changes() == start + 2


def test_adapter_paths_inside_the_data_set_are_stored_relative_to_it(tmp_path):
    store = Store.open(tmp_path / "set")
    rid = store.start_round(0, voted_pairs(store), {}, pid=None)
    store.finish_round(rid, tmp_path / "set" / "adapters" / "round-0001", {})
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT path FROM adapter_versions").fetchone()[0] == "adapters/round-0001"
    assert store.version(1)["path"] == str(tmp_path / "set" / "adapters" / "round-0001")
    (tmp_path / "set").rename(tmp_path / "moved")  # the folder moves (a restore): its adapters come with it
    assert Store.open(tmp_path / "moved").versions()[0]["path"] == str(tmp_path / "moved" / "adapters" / "round-0001")
