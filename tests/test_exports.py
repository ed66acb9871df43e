"""The three kinds of feedback leave in trl's formats: the exports load with `datasets`, trl's own CLIs (`trl sft`,
`trl dpo`, `trl kto`) train on them unchanged, and a push puts all three in one dataset repo, one config each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import add_compare, add_short_vs_long_votes

from playground import publishing
from playground.data_sets import DataSet

ROOT = Path(__file__).resolve().parent.parent
KINDS = {
    "pairs": ("dpo", ["prompt", "chosen", "rejected"]),
    "demonstrations": ("sft", ["messages"]),
    "ratings": ("kto", ["prompt", "completion", "label"]),
}


def feedback(store) -> None:
    add_short_vs_long_votes(store, 4)
    for i in range(4):
        comparison, ids = add_compare(
            store,
            f"Rate me {i}?",
            {"base": f"No {i}.", "sft": f"Yes {i}, gladly.", "pref": f"A long answer {i} " * 4},
            session=f"r{i}",
        )
        store.vote_thumb(f"r{i}", ids["sft"], True)
        store.vote_thumb(f"r{i}", ids["pref"], False)
        store.add_correction(f"r{i}", comparison, f"The ideal answer number {i}.")


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Each export written by the CLI into a folder of its own (what `--dataset_name FOLDER` reads)."""
    root = tmp_path_factory.mktemp("exports")
    feedback(DataSet.for_models(root, str(tiny_models["base"]), str(tiny_models["sft"])).open_store())
    folders = {}
    for what in KINDS:
        folders[what] = root / what
        folders[what].mkdir()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "playground",
                "-q",
                "export",
                "--what",
                what,
                "--out",
                str(folders[what] / f"{what}.jsonl"),
                "--base",
                str(tiny_models["base"]),
                "--sft",
                str(tiny_models["sft"]),
                "--data-dir",
                str(root),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
    return folders


@pytest.mark.slow
def test_each_export_loads_with_datasets_in_its_trl_format(exported):
    from datasets import load_dataset

    counts = {}
    for what, (_, columns) in KINDS.items():
        dataset = load_dataset("json", data_files=str(exported[what] / f"{what}.jsonl"), split="train")
        assert dataset.column_names == columns, what
        counts[what] = len(dataset)
    assert counts == {"pairs": 4 + 4 * 3, "demonstrations": 4, "ratings": 8}
    ratings = load_dataset("json", data_files=str(exported["ratings"] / "ratings.jsonl"), split="train")
    assert sorted(ratings["label"]) == [False] * 4 + [True] * 4
    assert ratings[0]["prompt"][-1]["role"] == "user" and ratings[0]["completion"][0]["role"] == "assistant"


@pytest.mark.parametrize("what", list(KINDS))
@pytest.mark.slow
def test_trls_own_cli_trains_on_the_export_unchanged(what, exported, tiny_models, tmp_path):
    command = KINDS[what][0]
    result = subprocess.run(
        [
            "trl",
            command,
            "--model_name_or_path",
            str(tiny_models["sft"]),
            "--dataset_name",
            str(exported[what]),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--max_length",
            "64",
            "--report_to",
            "none",
            "--bf16",
            "False",
            "--use_cpu",
            "True",
            "--gradient_checkpointing",
            "False",
            "--save_strategy",
            "no",
            "--logging_steps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'train_loss'" in result.stdout + result.stderr, "trl trained and reported its loss"


class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi (the Hub is out of reach here): it keeps what each commit holds."""

    def __init__(self):
        self.repos, self.files = [], {}

    def create_repo(self, repo_id, repo_type=None, exist_ok=False, private=None):
        self.repos.append((repo_id, repo_type, private))

    def create_commit(self, repo_id, repo_type, operations, commit_message):
        for op in operations:
            source = op.path_or_fileobj
            self.files[op.path_in_repo] = Path(source).read_bytes() if isinstance(source, str) else source


def test_a_push_puts_every_kind_in_one_dataset_repo_one_config_each(tmp_path):
    from huggingface_hub import DatasetCard

    store = DataSet.for_models(tmp_path, "base", "sft").open_store()
    feedback(store)
    api = RecordingHubApi()
    message = publishing.push_to_hub(store, "hf_token", "me/feedback", api=api)
    assert message == "✓ Pushed 16 pairs, 4 demonstrations and 8 ratings to the dataset `me/feedback`.", message
    assert api.repos == [("me/feedback", "dataset", True)]
    assert set(api.files) == {"preference_pairs.jsonl", "demonstrations.jsonl", "ratings.jsonl", "README.md"}
    assert [json.loads(line)["label"] for line in api.files["ratings.jsonl"].splitlines()].count(True) == 4
    card = DatasetCard(api.files["README.md"].decode())
    configs = {c["config_name"]: c["data_files"] for c in card.data.configs}
    assert configs == {
        "pairs": "preference_pairs.jsonl",
        "demonstrations": "demonstrations.jsonl",
        "ratings": "ratings.jsonl",
    }
    assert 'load_dataset("me/feedback", "ratings"' in card.text


@pytest.mark.slow
def test_trls_own_reward_cli_trains_a_reward_model_on_the_pairs_export_unchanged(exported, tiny_models, tmp_path):
    """`trl reward` (a LoRA with a scalar head, as each round trains one) reads the same pairs file as `trl dpo`."""
    result = subprocess.run(
        [
            *("trl", "reward", "--model_name_or_path", str(tiny_models["sft"])),
            *("--dataset_name", str(exported["pairs"]), "--output_dir", str(tmp_path / "out")),
            *("--max_steps", "2", "--per_device_train_batch_size", "2", "--max_length", "1024"),
            *("--report_to", "none", "--bf16", "False", "--use_cpu", "True", "--gradient_checkpointing", "False"),
            *("--save_strategy", "no", "--logging_steps", "1", "--use_peft", "--lora_task_type", "SEQ_CLS"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'train_loss'" in result.stdout + result.stderr, "trl trained and reported its loss"


def test_a_push_with_a_reward_model_repo_uploads_the_versions_reward_model_with_its_card(tmp_path):
    """`push --reward-model-repo`: the version's reward model folder (PEFT, its head) with a model card, to its own
    repo; the adapter upload leaves it out."""
    store = DataSet.for_models(tmp_path, "base", "sft").open_store()
    feedback(store)
    round_id = store.start_round(None, [p["id"] for p in store.pending_pairs()], {"beta": 0.1}, pid=os.getpid())
    folder = tmp_path / "adapters" / "round-0001"
    (folder / "reward_model").mkdir(parents=True)
    for part in (folder, folder / "reward_model"):
        (part / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": "sft"}))
        (part / "adapter_model.safetensors").write_bytes(b"weights")
    version = store.finish_round(round_id, folder, {})
    store.set_reward_model(version, {"pairs": 16, "accuracy_train": 0.9})
    uploads = {}

    class Api(RecordingHubApi):
        def upload_folder(self, folder_path, repo_id, commit_message):
            uploads[repo_id] = sorted(p.name for p in Path(folder_path).iterdir())
            if repo_id == "me/rm":
                uploads["card"] = (Path(folder_path) / "README.md").read_text()

    message = publishing.push_to_hub(
        store,
        "hf_token",
        "me/feedback",
        "me/adapter",
        version,
        sft_hub_id="org/sft",
        api=Api(),
        reward_model_repo="me/rm",
    )
    assert message.endswith(f"adapter v{version} to `me/adapter` and its reward model to `me/rm`."), message
    assert "reward_model" not in uploads["me/adapter"]
    assert uploads["me/rm"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert (
        "org/sft" in uploads["card"]
        and "16" in uploads["card"]
        and "AutoModelForSequenceClassification" in uploads["card"]
    )
