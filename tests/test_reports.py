"""The versions table both faces show (dashboard.version_table) and the CLI's text reports of it."""

from __future__ import annotations

from playground.cli.reports import versions_text
from playground.dashboard import NOT_MEASURED, VERSION_COLUMNS, version_table
from playground.ui.training_panels import VERSION_HEADERS, versions_table


def facts() -> dict:
    version = {
        "version": 1,
        "parent_version": None,
        "state": "ready",
        "reason": None,
        "learned_from": {"demonstrations": 2, "pairs": 16, "ratings": 0},
        "serving": True,
        "served_on_publish": True,
        "metrics": {"final_loss": 0.61234, "final_reward_margin": 0.25, "final_reward_accuracy": 0.75},
        "path": "/data/adapters/v1",
        "vote_win_rate": {"games": 8, "wins": 6, "rate": 0.75},
        "drift": {"mean_tokens": 41.25, "distinct_2": 0.9, "kl_to_sft": 1.5, "sft_perplexity": 7.125},
    }
    broken = version | {
        "version": 2,
        "parent_version": 1,
        "state": "bad",
        "reason": "folder missing",
        "serving": False,
        "metrics": None,
        "vote_win_rate": None,
        "drift": None,
        "path": "/data/adapters/v2",
    }
    return {"serving_version": 1, "sft_win_rate": None, "sft_drift": None, "versions": [version, broken]}


def test_the_table_has_the_sft_model_first_then_each_version_with_what_it_learned_and_measured():
    rows = version_table(facts())
    assert [row["version"] for row in rows] == ["v0 (SFT, no adapter)", "v1", "v2"]
    assert all(set(row) == set(VERSION_COLUMNS) for row in rows)
    v0, v1, v2 = rows
    assert v0["serving"] == "" and v0["vote_win_rate"] == NOT_MEASURED and v0["kl_to_sft"] == NOT_MEASURED
    assert v1["serving"] == "✓" and v1["parent"] == "v0" and v1["pairs"] == "16" and v1["final_loss"] == "0.612"
    assert v1["vote_win_rate"] == "75% of 8" and v1["mean_tokens"] == "41.2" and v1["sft_perplexity"] == "7.12"
    assert v2["state"] == "bad (folder missing)" and v2["parent"] == "v1" and v2["final_loss"] == NOT_MEASURED


def test_the_page_and_the_command_line_show_the_same_cells():
    page = versions_table(facts())
    assert all(len(row) == len(VERSION_HEADERS) for row in page)
    text = versions_text("demo", facts()).splitlines()
    assert text[0] == "data set demo" and text[1].split()[:2] == ["version", "serving"]
    for shown, line in zip(page, text[2:5]):
        cells = [cell for cell in shown if cell]
        assert all(cell in line for cell in cells), (cells, line)
    assert "/data/adapters/v2" in text[4] and "No adapter versions yet" not in "\n".join(text)
    empty = versions_text("demo", facts() | {"versions": []})
    assert "No adapter versions yet" in empty
