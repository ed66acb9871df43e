"""Conversations and corrections in the store: one shared history per turn, what a turn continues with, pairs whose
chosen and rejected share the exact prompt, corrections as demonstrations, and the migration of an older file."""

from __future__ import annotations

import sqlite3

import pytest
from helpers import pragmas

from playground.store import Store, StoreError, VoteError
from playground.store import migrations as schema_module
from playground.votes import to_trl

TEXTS = {"base": "Base answer.", "sft": "SFT answer.", "pref": "Preference answer."}


def turn(store: Store, prompt: str, history=(), session="s", chat="chat-1", parent=None, texts=TEXTS):
    answers = [{"arm": arm, "text": text, "model": arm} for arm, text in texts.items()]
    cid, ids = store.add_comparison(
        prompt, session, answers=answers, history=list(history), chat_id=chat, parent_answer_id=parent
    )
    return cid, dict(zip(texts, ids))


def test_what_a_turn_continues_with(tmp_path):
    store = Store.open(tmp_path)
    cid, ids = turn(store, "Hi?")
    assert store.continuation(cid, "s")["id"] == ids["pref"]  # nothing chosen: the preference-tuned answer
    assert store.continuation(cid, "s", ids["base"])["id"] == ids["base"]  # "continue from this"
    store.vote_best("s", cid, [ids["sft"]])
    assert store.continuation(cid, "s", ids["base"])["id"] == ids["sft"]  # a vote beats a choice
    assert store.continuation(cid, "other-session")["id"] == ids["pref"]  # someone else's vote is not mine
    store.add_correction("s", cid, "My own, better answer.")
    assert store.continuation(cid, "s")["text"] == "My own, better answer."  # a correction beats everything
    with pytest.raises(StoreError, match="not an answer of comparison"):
        store.continuation(cid, "other-session", 10_000)


def test_a_duel_continues_with_its_winner(tmp_path):
    store = Store.open(tmp_path)
    cid, (a, b) = store.add_comparison(
        "Hi?",
        "s",
        mode="duel",
        answers=[{"arm": "pref", "text": "A.", "model": "m"}, {"arm": "pref", "text": "B.", "model": "m"}],
    )
    assert store.continuation(cid, "s")["id"] == a
    store.vote_pairwise("s", cid, a, b, "b")
    assert store.continuation(cid, "s")["id"] == b


def test_three_turns_share_one_history_and_every_pair_of_a_turn_one_prompt(tmp_path):
    store = Store.open(tmp_path)
    c1, ids1 = turn(store, "First question?")
    store.vote_best("s", c1, [ids1["sft"], ids1["pref"], ids1["base"]])
    history2 = store.next_history(c1, store.continuation(c1, "s"))
    assert history2 == [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "SFT answer."}]
    c2, ids2 = turn(store, "Second question?", history2, parent=ids1["sft"])
    store.vote_best("s", c2, [ids2["base"]])
    c3, _ = turn(store, "Third?", store.next_history(c2, store.continuation(c2, "s")), parent=ids2["base"])
    assert [c["turn"] for c in store.chat("chat-1")] == [1, 2, 3]
    assert store.comparison(c3)["parent_answer_id"] == ids2["base"]

    for pair in store.pairs():
        row = to_trl(pair)
        comparison = store.comparison(pair["comparison_id"])
        assert row["prompt"] == comparison["history"] + [{"role": "user", "content": comparison["prompt"]}]
        assert len(row["chosen"]) == len(row["rejected"]) == 1
    turn2 = [to_trl(p) for p in store.pairs() if p["comparison_id"] == c2]
    assert len(turn2) == 2 and turn2[0]["prompt"] == turn2[1]["prompt"]
    assert [m["role"] for m in turn2[0]["prompt"]] == ["user", "assistant", "user"]


def test_a_correction_is_a_demonstration_and_the_chosen_side_of_pairs(tmp_path):
    store = Store.open(tmp_path)
    c1, ids1 = turn(store, "First?")
    c2, ids2 = turn(store, "Second?", store.next_history(c1, store.continuation(c1, "s")), parent=ids1["pref"])
    for empty in ("", "   "):
        with pytest.raises(VoteError, match="empty"):
            store.add_correction("s", c2, empty)
    receipt = store.add_correction("s", c2, "The answer I wanted.", voter="hf:ada")
    assert receipt.pairs_created == 3 and "demonstration" in receipt.message
    with pytest.raises(VoteError, match="already wrote a better answer"):
        store.add_correction("s", c2, "Another one.")
    pairs = [p for p in store.pairs() if p["vote_kind"] == "correction"]
    assert {p["chosen_text"] for p in pairs} == {"The answer I wanted."}
    assert {p["rejected_arm"] for p in pairs} == {"base", "sft", "pref"}

    # the models' columns stay what a vote is about: a full ranking of three still works on that turn
    store.vote_best("s", c2, [ids2["base"], ids2["sft"], ids2["pref"]])
    assert list(store.export_demonstrations()) == [
        {
            "messages": [
                {"role": "user", "content": "First?"},
                {"role": "assistant", "content": "Preference answer."},
                {"role": "user", "content": "Second?"},
                {"role": "assistant", "content": "The answer I wanted."},
            ]
        }
    ]
    # raw votes: the correction shows with the vote that made it, not with the others of the turn
    votes = {v["kind"]: v for v in store.export_votes()}
    assert [a["arm"] for a in votes["best"]["answers"]] == ["base", "sft", "pref"]
    assert votes["correction"]["answers"][0]["arm"] == "human"


def test_a_file_from_before_conversations_migrates_with_its_votes(tmp_path, monkeypatch):
    path = tmp_path / "playground.sqlite3"
    monkeypatch.setattr(schema_module, "MIGRATIONS", schema_module.MIGRATIONS[:4])
    Store(path)  # a schema-4 file, filled the way that version wrote it
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO prompts (id, text, created_at) VALUES (1, 'Old prompt', 0)")
        conn.execute(
            "INSERT INTO comparisons (id, prompt_id, session_id, mode, created_at) VALUES (1, 1, 's', 'compare', 0)"
        )
        for slot, (arm, text) in enumerate(TEXTS.items()):
            conn.execute(
                "INSERT INTO answers (id, comparison_id, arm, slot, model, text, created_at) "
                "VALUES (?, 1, ?, ?, ?, ?, 0)",
                (slot + 1, arm, slot, arm, text),
            )
        conn.execute(
            "INSERT INTO votes (id, kind, session_id, comparison_id, created_at) VALUES (1, 'best', 's', 1, 0)"
        )
        conn.execute("INSERT INTO vote_answers VALUES (1, 3, 0)")
        conn.executemany(
            "INSERT INTO pairs (vote_id, comparison_id, chosen_answer_id, rejected_answer_id, "
            "created_at) VALUES (1, 1, 3, ?, 0)",
            [(1,), (2,)],
        )
    cid = 1
    monkeypatch.undo()
    new = Store(path)
    assert pragmas(new)["user_version"] == len(schema_module.MIGRATIONS)
    c = new.comparison(cid)
    assert (c["history"], c["turn"], c["chat_id"]) == ([], 1, None)
    assert len(new.pairs()) == 2 and new.counts()["votes"] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    new.add_correction("s", cid, "Better.")  # the new kinds and arms are accepted after the migration
