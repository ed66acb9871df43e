"""The feedback loop on tiny models: DPO rounds, adapter versions, hot swap, rollback, fallbacks, crashes, export,
and the settings the trainer process receives."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import AnswersInFlight, add_compare, add_short_vs_long_votes, tiny_round

from playground.core import Playground
from playground.data_sets import DataSet
from playground.generation import Engine
from playground.models import load_model
from playground.processes import wait_for
from playground.settings import ModelSettings, RoundSettings, Sampling
from playground.training import run_round

ROOT = Path(__file__).resolve().parent.parent
GREEDY = Sampling(temperature=0, max_new_tokens=8, seed=0)
# A large learning rate so that one tiny round visibly changes a tiny model's outputs.
FAST = tiny_round()


def digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def tiny_settings(tiny_models, data_dir: Path) -> ModelSettings:
    return ModelSettings(base=str(tiny_models["base"]), sft=str(tiny_models["sft"]), data_dir=str(data_dir))


@pytest.fixture()
def playground(tiny_models, tmp_path):
    engine = Engine(load_model(str(tiny_models["base"]), tmp_path), load_model(str(tiny_models["sft"]), tmp_path))
    pg = Playground(tiny_settings(tiny_models, tmp_path), FAST, engine=engine)
    yield pg
    pg.close()


def train(playground, settings=FAST) -> int | None:
    return run_round(playground.store, playground.data_set.adapters_dir, str(playground.preset.sft), settings)


@pytest.mark.slow
def test_round_writes_a_peft_adapter_that_changes_outputs_and_never_the_sft_weights(playground, tiny_models):
    sft_before = digest(tiny_models["sft"])
    before = playground.engine.generate("Tell me about topic 3.", GREEDY)
    assert train(playground) is None, "no pairs: no round"
    add_short_vs_long_votes(playground.store, 8)

    version = train(playground)

    assert version == 1 and playground.store.serving_version() == 1
    folder = Path(playground.store.version(1)["path"])
    assert folder.parent == playground.data_set.adapters_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "playground.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "ref").exists(), "trl's reference copy must not be saved"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert config["base_model_name_or_path"] == str(tiny_models["sft"]), "a local SFT model has no Hub id"
    meta = json.loads((folder / "playground.json").read_text())
    assert meta["parent_version"] == 0 and len(meta["pairs"]) == 8 and meta["hyperparams"]["reference"] == "sft"
    steps = playground.store.round_steps()
    assert len(steps) == 2 and all(s["loss"] is not None and s["reward_accuracy"] is not None for s in steps)
    assert steps[-1]["reward_margin"] > 0, "the chosen answers must gain on the rejected ones"
    assert playground.store.pending_pairs() == []
    assert not [p for p in playground.data_set.adapters_dir.iterdir() if p.name.startswith(".")], "no temp left"

    assert playground.sync_adapter() == 1
    after = playground.engine.generate("Tell me about topic 3.", GREEDY)
    assert after["pref"].adapter_version == 1 and after["pref"].text != before["pref"].text
    assert after["sft"].text == before["sft"].text
    assert digest(tiny_models["sft"]) == sft_before


@pytest.mark.slow
def test_an_adapter_trained_on_a_hub_model_names_its_hub_id(playground):
    add_short_vs_long_votes(playground.store, 4)
    run_round(
        playground.store,
        playground.data_set.adapters_dir,
        str(playground.preset.sft),
        FAST,
        sft_hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    config = json.loads((Path(playground.store.version(1)["path"]) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_next_round_warm_starts_from_the_parent(playground):
    add_short_vs_long_votes(playground.store, 4, session="first")
    assert train(playground) == 1
    add_short_vs_long_votes(playground.store, 4, session="second")
    assert train(playground) == 2
    v2 = playground.store.version(2)
    assert v2["parent_version"] == 1
    meta = json.loads((Path(v2["path"]) / "playground.json").read_text())
    assert meta["hyperparams"]["new_pairs"] == 4 and meta["hyperparams"]["replayed_pairs"] == 4
    first_step = playground.store.round_steps(2)[0]
    assert first_step["reward_margin"] > 0, "a warm start begins where the parent left off, not at zero"


@pytest.mark.slow
def test_rollback_and_corrupt_or_missing_adapters_fall_back_to_the_last_good(playground, tiny_models):
    for session in ("a", "b", "c"):
        add_short_vs_long_votes(playground.store, 4, session=session)
        train(playground)
    assert playground.sync_adapter() == 3
    answers = {v: None for v in (1, 2, 3)}
    for version in (1, 2, 3):
        assert playground.rollback(version) == version
        answers[version] = playground.engine.generate("Hello there", GREEDY)["pref"].text
    assert playground.rollback(0) == 0 and playground.engine.adapter_version == 0

    # v3's weights are truncated, v2's folder vanished: serving falls back to v1, with reasons recorded.
    weights = Path(playground.store.version(3)["path"]) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    import shutil

    shutil.rmtree(playground.store.version(2)["path"])
    playground.store.set_serving_version(3)
    assert playground.sync_adapter() == 1
    assert playground.store.version(3)["state"] == "bad" and "cannot be read" in playground.store.version(3)["reason"]
    assert playground.store.version(2)["state"] == "bad" and "missing" in playground.store.version(2)["reason"]
    assert playground.engine.generate("Hello there", GREEDY)["pref"].text == answers[1]

    # A restarted server serves the latest good version.
    fresh = Playground(
        playground.models,
        FAST,
        engine=Engine(playground.engine.base, load_model(str(tiny_models["sft"]), playground.data_dir)),
    )
    assert fresh.engine.adapter_version == 1


def _trainer(data_dir: Path, sft: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "train",
            "--data-dir",
            str(data_dir),
            "--sft",
            str(sft),
            "--base",
            str(sft),
            "--train-threads",
            "1",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_kill_9_mid_round_loses_nothing_and_the_next_round_runs(tiny_models, tmp_path):
    store = DataSet.for_models(tmp_path, str(tiny_models["sft"]), str(tiny_models["sft"])).open_store()
    add_short_vs_long_votes(store, 12)
    votes_before = store.counts()["votes"]
    trainer = _trainer(
        tmp_path, tiny_models["sft"], "--watch", "--min-pairs", "4", "--epochs", "400", "--learning-rate", "1e-3"
    )
    try:
        assert wait_for(lambda: (store.running_round() or {}).get("steps_done", 0) >= 2, timeout=240), (
            "the round never got going"
        )
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    assert store.counts()["votes"] == votes_before
    assert store.serving_version() == 0 and store.versions() == []
    assert len(store.pending_pairs()) == 12, "pairs of an unfinished round stay pending"
    assert not list(store.root.glob("adapters/round-*")), "no half-written adapter is published"

    again = _trainer(tmp_path, tiny_models["sft"], "--once", "--epochs", "1")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    rounds = store.rounds()
    assert [(r["status"], r["error"]) for r in rounds] == [("failed", "interrupted"), ("done", None)]
    assert store.serving_version() == 1 and store.pending_pairs() == []


@pytest.mark.slow
def test_app_trainer_process_hot_swaps_while_people_keep_chatting(playground):
    engine = playground.engine
    sft_text = engine.generate("Keep chatting", GREEDY)["sft"].text
    in_flight, swaps, swapped = AnswersInFlight(), [], threading.Event()
    use_adapter = engine.use_adapter

    def swap_while_chatting(version, path):
        # The follower's swap waits for an answer to be in progress, so the swap surely lands mid-chat.
        swaps.append((version, in_flight.wait()))
        use_adapter(version, path)
        swapped.set()

    engine.use_adapter = swap_while_chatting
    playground.start_trainer()
    playground.follow_versions(interval=0.2)
    try:
        add_short_vs_long_votes(playground.store, 4)
        seen, errors = [], []
        deadline = time.monotonic() + 400

        def answer():
            answers, started_with = in_flight.answer(engine, "Keep chatting", GREEDY)
            seen.append((answers["pref"].adapter_version, answers["sft"].text, started_with))

        def chat():
            try:
                while not swapped.is_set() and time.monotonic() < deadline and not playground.trainer.exits:
                    answer()
                for _ in range(3):
                    answer()
            except Exception as error:
                errors.append(error)

        users = [threading.Thread(target=chat) for _ in range(2)]
        for user in users:
            user.start()
        for user in users:
            user.join(timeout=450)
        assert not errors, errors
        assert swapped.is_set(), "the new version was never swapped in"
        assert engine.adapter_version == 1
        ((version, in_flight),) = swaps
        assert version == 1 and in_flight and set(in_flight.values()) == {0}, "swapped while v0 answers streamed"
        assert {version for version, _, _ in seen} == {0, 1}, "answers were served before and after the swap"
        assert all(version == started for version, _, started in seen), "no answer changed version mid-way"
        assert all(text == sft_text for _, text, _ in seen), "the SFT arm never saw the adapter"
    finally:
        playground.stop_trainer()
    assert not playground.trainer_alive()
    assert [r["status"] for r in playground.store.rounds()] == ["done"]


@pytest.mark.slow
def test_train_now_runs_a_round_below_min_pairs(playground):
    add_short_vs_long_votes(playground.store, 2)
    playground.start_trainer()
    try:
        # The trainer says what it saw: 2 pending pairs, fewer than min_pairs, so it waits (once it has measured
        # version 0's drift, what an idle trainer does first).
        assert wait_for(
            lambda: (
                (playground.store.trainer_state() or {}).get("pending") == 2
                and playground.store.trainer_state()["state"] == "waiting"
            ),
            timeout=120,
        )
        state = playground.store.trainer_state()
        assert (state["state"], state["min_pairs"]) == ("waiting", FAST.min_pairs)
        assert playground.store.versions() == [] and playground.store.rounds() == []
        playground.train_now()
        assert wait_for(lambda: playground.store.serving_version() == 1, timeout=240)
    finally:
        playground.stop_trainer()
    assert playground.store.trainer_state()["state"] == "stopped"


@pytest.mark.slow
def test_every_round_setting_reaches_the_trainer_process(playground, tiny_models, tmp_path):
    defaults = RoundSettings()
    prompts = tmp_path / "drift.jsonl"
    prompts.write_text('{"prompt": "Name a color."}\n{"prompt": "Count to three."}\n{"prompt": "Say hi."}\n')
    custom = RoundSettings(
        min_pairs=3,
        max_new_pairs=5,
        replay_pairs=1,
        epochs=1,
        batch_size=2,
        grad_accumulation=2,
        learning_rate=3e-3,
        beta=0.25,
        rpo_weight=0.7,
        max_length=96,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj"],
        train_threads=defaults.train_threads + 1,
        idle_train_threads=defaults.idle_train_threads + 2,
        train_seed=7,
        pairs_per_voter=defaults.pairs_per_voter + 4,
        eval_prompts=str(prompts),
        eval_tokens=6,
        sft_weight=0.5,
        rating_weight=2.0,
        dpo_reference="previous",
        preference_route="rlhf",
        reward_model=False,  # dpo rounds only: the rlhf route trains the reward model it is rewarded by
        reward_learning_rate=1e-3,
        rl_learning_rate=4e-3,
        rl_beta=0.1,
        rl_prompts=str(prompts),
        rl_steps=2,
        rl_generations=2,
        rl_completion_tokens=8,
        checkpoint_steps=1,
    )
    assert all(getattr(custom, f.name) != getattr(defaults, f.name) for f in dataclasses.fields(RoundSettings))
    playground.round_settings = custom
    # First a rater: 2 ratings, then a better answer (1 demonstration, 3 pairs); one voter's share is 4, oldest first.
    store = playground.store
    comparison, ids = add_compare(
        store, "Rate these?", {"base": "No.", "sft": "Yes, gladly.", "pref": "Maybe so."}, session="rater"
    )
    store.vote_thumb("rater", ids["sft"], True)
    store.vote_thumb("rater", ids["pref"], False)
    store.add_correction("rater", comparison, "Yes: here is how.")
    # Then 6 pairs of another voter: max_new_pairs takes 5 pieces in all, so 1 of these.
    add_short_vs_long_votes(store, 6)
    playground.start_trainer()
    try:
        assert wait_for(lambda: playground.store.versions(), timeout=300), "no round ran"
        # ... and measured the version it made (right after publishing it)
        # (after the rounds the rest of the feedback starts: a measurement gives way to a round that is due)
        assert wait_for(lambda: any(e["version"] == 1 for e in playground.store.version_evals()), timeout=300)
    finally:
        playground.stop_trainer()
    rnd = next(r for r in playground.store.rounds() if r["status"] == "done")
    recorded = rnd["hyperparams"]
    assert {k: recorded[k] for k in custom.as_dict()} == custom.as_dict()
    assert {k: recorded[f"new_{k}"] for k in ("ratings", "demonstrations", "pairs")} == {
        "ratings": 2,
        "demonstrations": 1,
        "pairs": 1 + 1,
    }
    assert recorded["stages"] == ["sft", "grpo", "kto"] and rnd["learned_from"] == {
        "demonstrations": 1,
        "pairs": 2,
        "ratings": 2,
    }
    # Each weight scales its stage's learning rate.
    steps = store.round_steps(rnd["id"])
    rates = {s["stage"]: s["learning_rate"] for s in steps}
    assert rates == pytest.approx({"sft": 3e-3 * 0.5, "grpo": 4e-3, "kto": 3e-3 * 2.0})
    rl = [s for s in steps if s["stage"] == "grpo"]
    assert len(rl) == 2 and all(s["extra"]["completions/max_length"] <= 8 for s in rl)
    assert all("kl" in s["extra"] and "reward" in s["extra"] for s in rl), "β > 0: trl logs the KL term"
    reward_model = json.loads((Path(store.version(1)["path"]) / "reward_model" / "reward_model.json").read_text())
    assert reward_model["pairs"] == 2
    config = json.loads((Path(playground.store.version(1)["path"]) / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 8, 0.05)
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj"}
    # The drift of the version was measured on the prompt set and length given.
    drift = {e["version"]: e["metrics"] for e in playground.store.version_evals()}[1]
    assert (drift["prompts"], drift["max_new_tokens"]) == (3, 6) and drift["mean_tokens"] <= 6


@pytest.mark.slow
def test_a_rollback_during_a_round_survives_it(playground):
    add_short_vs_long_votes(playground.store, 4, session="first")
    assert train(playground) == 1 and playground.sync_adapter() == 1
    slow = dataclasses.replace(FAST, epochs=40)  # long enough to roll back while it runs
    playground.round_settings = slow
    add_short_vs_long_votes(playground.store, 4, session="second")
    playground.start_trainer()
    try:
        assert wait_for(lambda: playground.store.running_round() is not None, timeout=120)
        assert playground.rollback(0) == 0  # the admin: "back to the SFT model"
        assert wait_for(lambda: len(playground.store.versions()) == 2, timeout=300), "the round never finished"
    finally:
        playground.stop_trainer()
    assert playground.store.serving_version() == 0 and playground.sync_adapter() == 0
    v2 = playground.store.version(2)
    assert (v2["parent_version"], v2["serving"], v2["served_on_publish"]) == (1, False, 0)

    from playground.training import eligible_counts
    from playground.ui.training_panels import training_status

    facts = playground.dashboard.facts()
    eligible = eligible_counts(playground.store, playground.round_settings)
    assert "v2 was published but does not serve" in training_status(facts, 0, False, 4, eligible)


@pytest.mark.slow
def test_generate_cli_answers_with_the_serving_version_and_follows_rollback(playground, tiny_models, tmp_path):
    add_short_vs_long_votes(playground.store, 4)
    assert train(playground) == 1

    def generate(*extra):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "playground",
                "-q",
                "generate",
                "Tell me about topic 3.",
                "--json",
                "--temperature",
                "0",
                "--max-new-tokens",
                "12",
                "--base",
                str(tiny_models["base"]),
                "--sft",
                str(tiny_models["sft"]),
                "--data-dir",
                str(playground.data_dir),
                *extra,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    served = generate()
    assert (served["serving_version"], served["adapter_version"], served["pref"]["adapter_version"]) == (1, 1, 1)
    assert served["data_set"] == playground.data_set.name
    rolled = subprocess.run(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "rollback",
            "0",
            "--base",
            str(tiny_models["base"]),
            "--sft",
            str(tiny_models["sft"]),
            "--data-dir",
            str(playground.data_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rolled.returncode == 0, rolled.stderr
    after = generate()
    assert (after["serving_version"], after["pref"]["adapter_version"]) == (0, 0)
    assert served["pref"]["text"] != served["sft"]["text"], "v1 answers differently from the SFT model"
    assert after["pref"]["text"] == after["sft"]["text"] == served["sft"]["text"]
    chosen = generate("--version", "1")
    assert (chosen["serving_version"], chosen["pref"]["adapter_version"]) == (0, 1)
    assert chosen["pref"]["text"] == served["pref"]["text"]
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "playground",
            "-q",
            "generate",
            "Hi",
            "--version",
            "9",
            "--base",
            str(tiny_models["base"]),
            "--sft",
            str(tiny_models["sft"]),
            "--data-dir",
            str(playground.data_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "Adapter version 9 does not exist" in missing.stderr


@pytest.mark.slow
def test_export_round_trips_through_datasets_and_a_plain_trl_step(playground, tiny_models, tmp_path):
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    add_short_vs_long_votes(playground.store, 4)
    models = [
        "--base",
        str(tiny_models["base"]),
        "--sft",
        str(tiny_models["sft"]),
        "--data-dir",
        str(playground.data_dir),
    ]
    out = tmp_path / "pairs.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "playground", "export", "--out", str(out), *models],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "Wrote 4 preference pairs" in result.stdout, result.stderr
    raw = tmp_path / "votes.jsonl"
    subprocess.run(
        [sys.executable, "-m", "playground", "export", "--what", "votes", "--out", str(raw), *models],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    assert len(raw.read_text().splitlines()) == 4

    dataset = load_dataset("json", data_files=str(out), split="train")
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert dataset[0]["prompt"][0]["role"] == "user" and dataset[0]["chosen"][0]["role"] == "assistant"

    torch.manual_seed(0)
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_models["sft"]),
        args=DPOConfig(
            output_dir=str(tmp_path / "trl"),
            max_steps=1,
            per_device_train_batch_size=2,
            bf16=False,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            max_length=64,
        ),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_models["sft"]),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    output = trainer.train()
    assert output.global_step == 1 and output.training_loss > 0


def _open_files_named(name: str) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith(name):
            found.append(target)
    return found


def test_a_crashed_trainer_is_restarted_and_its_log_is_not_left_open(playground):
    playground.trainer.restart_backoff = 0.5
    playground.start_trainer()
    playground.follow_versions(interval=0.2)
    try:
        first = playground.trainer.pid
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: playground.trainer_alive() and playground.trainer.pid != first, timeout=30)
        assert playground.trainer.exits and playground.trainer.exits[-1][1] == -signal.SIGKILL
    finally:
        playground.stop_trainer()
    assert not playground.trainer_alive()
    assert _open_files_named("trainer.log") == [], "the app must not keep a handle per trainer (re)start"


@pytest.mark.slow
def test_the_trainer_exits_when_the_app_is_killed(tiny_models, tmp_path):
    # A stand-in for the app: starts the trainer with its own pid as parent, prints the trainer's pid, waits.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import subprocess, sys, time\n"
                f"t = subprocess.Popen([sys.executable, '-m', 'playground', '-q', 'train', '--watch', '--data-dir', "
                f"{str(tmp_path)!r}, '--sft', {str(tiny_models['sft'])!r}, '--base', {str(tiny_models['sft'])!r}, "
                "'--parent-pid', str(__import__('os').getpid())])\n"
                "print(t.pid, flush=True)\n"
                "time.sleep(600)\n"
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    trainer_pid = int(parent.stdout.readline())
    store = DataSet.for_models(tmp_path, str(tiny_models["sft"]), str(tiny_models["sft"])).open_store()
    assert wait_for(lambda: (store.trainer_state() or {}).get("pid") == trainer_pid, timeout=60), "trainer never up"
    parent.kill()
    parent.wait()

    def gone():
        try:
            os.kill(trainer_pid, 0)
        except ProcessLookupError:
            return True
        # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{trainer_pid}/stat").read_text().split()[2] == "Z"

    assert wait_for(gone, timeout=30), "an orphaned trainer must stop by itself"


def test_a_serving_version_whose_record_is_gone_falls_back_and_drift_stores_nothing(
    playground, tiny_models, tiny_adapters
):
    import sqlite3

    from playground.drift import EvalPlan, evaluate_stored_version

    store = playground.store
    for v in (1, 2):
        round_id = store.start_round(store.serving_version(), [], {"beta": 0.1}, None)
        assert store.finish_round(round_id, str(tiny_adapters[v]), {}) == v
    with sqlite3.connect(store.path) as conn:  # a restore that lost the serving version's record
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM adapter_versions WHERE version = 2")
    assert store.serving_version() == 2 and store.version(2) is None
    fresh = Playground(
        playground.models,
        FAST,
        engine=Engine(playground.engine.base, load_model(str(tiny_models["sft"]), playground.data_dir)),
    )
    assert fresh.ready and fresh.engine.adapter_version == 1 and store.serving_version() == 1
    metrics = evaluate_stored_version(store, 2, str(tiny_models["sft"]), EvalPlan(("Say hi.",), 4, 0))
    assert "does not exist" in metrics["error"]
    assert not [row for row in store.version_evals() if row["version"] == 2], "nothing stored for good"
