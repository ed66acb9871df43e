"""What an ablation does with feedback some objectives cannot train on, without models: the SFT model's sampler is
replaced by canned answers, and the real round code declines before it would load one."""

from __future__ import annotations

from helpers import add_short_vs_long_votes, tiny_round

from playground import ablation
from playground.simulate import Oracle
from playground.store import Store


def canned_answers(sft_dir, adapter, plan) -> list[dict]:
    """What `ablation.sample` returns, for every prompt of the plan: no model is loaded."""
    return [{"text": f"An answer to {p}.", "tokens": 5, "logprob_sft": -5.0, "kl": 0.0} for p in plan.prompts]


def ablate(store: Store, tmp_path, monkeypatch, **kwargs) -> dict:
    monkeypatch.setattr(ablation, "sample", canned_answers)
    return ablation.ablate(
        store, "no-model-needed", tiny_round(), Oracle.parse("shorter"), ["Held out?"], 8, tmp_path / "ab", **kwargs
    )


def test_objectives_without_feedback_of_a_stages_kind_are_skipped_with_a_note(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "store")
    assert add_short_vs_long_votes(store, 3) == 3  # pairs only: no better answers, no ratings
    # The `sft` round would find nothing to train (the real round code declines before loading a model): a note,
    # not a crash.
    result = ablate(store, tmp_path, monkeypatch, objectives=["sft", "sft+dpo+kto"])
    assert result["ablation"] == {
        "sft": {"skipped": "no demonstrations recorded"},
        "sft+dpo+kto": {"skipped": "no demonstrations or ratings recorded"},
    }
    assert ablation.skipped_objectives(store) == {
        "sft": "no demonstrations recorded",
        "sft+dpo": "no demonstrations recorded",
        "sft+dpo+kto": "no demonstrations or ratings recorded",
        "sft+rm+rl": "no demonstrations recorded",
    }
    assert result["adapters"] == {}
    table = ablation.table(result).splitlines()
    # The SFT model against itself: every comparison a tie, none decided.
    assert table[2].startswith("| SFT model (v0) | 0.50 | 100% | 2.72 | 0.00 | 5.0 | – | 0 |"), table
    assert result["baseline"]["ties"] == 1.0 and result["baseline"]["win_rate_decided"] is None
    assert table[3] == "| sft | skipped: no demonstrations recorded | – | – | – | – | – | – |"
    assert len({line.count("|") for line in table}) == 1, "every row has the table's columns"


def test_an_objective_whose_round_makes_no_version_is_reported_as_such(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "store")
    add_short_vs_long_votes(store, 3)
    rounds = []
    monkeypatch.setattr(ablation, "run_round", lambda *args, **kwargs: rounds.append(kwargs["stages"]))
    result = ablate(store, tmp_path, monkeypatch)
    assert rounds == [("dpo",), ("grpo",)], "only the objectives with feedback for every stage train"
    assert list(result["ablation"]) == ["dpo", "sft", "sft+dpo", "sft+dpo+kto", "rm+rl", "sft+rm+rl"]
    assert result["ablation"]["dpo"] == {"skipped": ablation.NO_VERSION}
    assert f"| dpo | skipped: {ablation.NO_VERSION} |" in ablation.table(result)
