"""Preference pairs → one LoRA DPO round with trl → a new adapter version; and the trainer process's loop.

Choices (see README, "How the preference model learns"):
- The reference model is the SFT model itself (the LoRA adapter disabled), for every round. All versions are
  therefore anchored, through DPO's β-weighted implicit KL, to the same SFT model: rounds cannot drift away from
  fluent SFT behaviour step by step.
- Each round warm-starts from the serving adapter (its parent) and trains on the new pairs plus a replay of
  earlier pairs, so what earlier votes taught is kept while new votes are added.
- Reference log-probs are computed once per round (trl's `precompute_ref_log_probs`): the reference never
  changes during a round, so recomputing it every step would only cost time.
- CPU-safe settings: fp32 (no bf16 autocast), no gradient checkpointing, no reporting integrations.

The trainer runs in its own OS process (`python -m playground train --watch`), so a round never competes with the
server's Python interpreter and a crash or kill -9 of the trainer cannot take the server down. It communicates
only through the store and the adapter folders.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

from .settings import RoundSettings
from .store import Store
from .votes import to_trl

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


def select_pairs(store: Store, settings: RoundSettings) -> tuple[list[dict], list[dict]]:
    """(new pairs, replayed earlier pairs) for the next round. New pairs: the oldest pending ones, at most
    `pairs_per_voter` of any one voter (so one script cannot fill a round); the others stay pending for later rounds."""
    new = store.pending_pairs(limit=settings.max_new_pairs, per_voter=settings.pairs_per_voter)
    new_ids = {p["id"] for p in new}
    earlier = [p for p in store.pairs() if p["round_id"] is not None and p["id"] not in new_ids]
    rng = random.Random(settings.train_seed + len(earlier))
    replay = rng.sample(earlier, min(settings.replay_pairs, len(earlier)))
    return new, replay


def eligible_pair_count(store: Store, settings: RoundSettings) -> int:
    """The pending pairs a round could take now (at most `pairs_per_voter` of each voter's): what `min_pairs` is
    compared with."""
    return store.pending_pair_count(per_voter=settings.pairs_per_voter)


def dpo_config(settings: RoundSettings, output_dir: Path):
    """trl's DPOConfig for a round: trl's GPU-minded defaults turned into what a CPU runs well (fp32, no gradient
    checkpointing, no reporting), the reference log-probs computed once up front."""
    import torch
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accumulation,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        beta=settings.beta,
        max_length=settings.max_length,
        precompute_ref_log_probs=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=settings.train_seed,
    )


def fit_to_length(row: dict, tokenizer, max_length: int) -> dict:
    """A pair whose conversation is too long for `max_length` tokens loses its OLDEST turns (a user message and
    the answer after it, together), never an answer and never the turn's own question. trl would otherwise cut the
    prompt's start mid-message (or the answers' end); the same cut for chosen and rejected keeps their prompt equal."""
    if not getattr(tokenizer, "chat_template", None):
        return row
    prompt = list(row["prompt"])

    def tokens(messages) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    while len(prompt) > 1 and max(tokens(prompt + row[side]) for side in ("chosen", "rejected")) > max_length:
        prompt = prompt[2:]
    return {**row, "prompt": prompt}


def load_policy(sft_dir: str):
    """Fresh SFT weights for the round (the trainer never modifies the SFT files)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sft_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    return model, tokenizer


def run_round(
    store: Store,
    adapters_dir: Path,
    sft_dir: str,
    settings: RoundSettings | None = None,
    *,
    force: bool = False,
    sft_hub_id: str | None = None,
) -> int | None:
    """Train one DPO round if enough new pairs wait (or `force`); returns the new version, or None if idle.

    The adapter goes to `adapters_dir/round-NNNN`; its `base_model_name_or_path` is `sft_hub_id` when the SFT
    model has one (so the published adapter loads elsewhere), else the SFT folder."""
    settings = settings or RoundSettings()
    new, replay = select_pairs(store, settings)
    if not new or (len(new) < settings.min_pairs and not force):
        return None

    import torch
    from datasets import Dataset
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerCallback
    from trl import DPOTrainer

    torch.set_num_threads(settings.train_threads)
    parent = store.serving_version()
    parent_path = store.version(parent)["path"] if parent else None
    pairs = new + replay
    steps_total = settings.epochs * -(-len(pairs) // (settings.batch_size * settings.grad_accumulation))
    hyperparams = settings.as_dict() | {"new_pairs": len(new), "replayed_pairs": len(replay), "reference": "sft"}
    round_id = store.start_round(parent, [p["id"] for p in pairs], hyperparams, os.getpid())
    store.set_round_progress(round_id, 0, steps_total)
    log.info("Round %d: %d new + %d replayed pairs, parent v%d, %d steps.", round_id, len(new), len(replay), parent,
             steps_total)
    work = Path(tempfile.mkdtemp(prefix=f".round-{round_id}-", dir=_ensure(Path(adapters_dir))))
    try:
        model, tokenizer = load_policy(sft_dir)

        class Progress(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    store.log_step(round_id, state.global_step, logs)

            def on_step_end(self, args, state, control, **kwargs):
                store.set_round_progress(round_id, state.global_step, state.max_steps)

        rows = [fit_to_length(to_trl(p), tokenizer, settings.max_length) for p in pairs]
        dataset = Dataset.from_list(rows).shuffle(seed=settings.train_seed)
        config = dpo_config(settings, work / "trainer")
        lora = LoraConfig(
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.target_modules),
            task_type="CAUSAL_LM",
        )
        # A plain model plus peft_config: trl wraps it and uses "adapter disabled" (= the SFT model) as reference.
        fit_start = time.perf_counter()
        trainer = DPOTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[Progress()],
        )
        if parent_path:
            # Warm start: the parent's weights go into the fresh "default" adapter after the reference log-probs
            # were computed with the adapter disabled, so the reference stays the SFT model.
            state = load_file(str(Path(parent_path) / "adapter_model.safetensors"))
            result = set_peft_model_state_dict(trainer.model, state, adapter_name="default")
            if getattr(result, "unexpected_keys", None):
                raise TrainingError(f"parent adapter v{parent} does not fit this model: {result.unexpected_keys[:3]}")
        output = trainer.train()
        fit_seconds = time.perf_counter() - fit_start  # tokenizing, reference log-probs and training
        peft_model = trainer.model
        peft_model.eval()
        steps = store.round_steps(round_id)
        metrics = {
            "train_loss": output.training_loss,
            "steps": output.global_step,
            "seconds": output.metrics.get("train_runtime"),
            "fit_seconds": fit_seconds,
            "final_loss": steps[-1]["loss"] if steps else None,
            "final_reward_margin": steps[-1]["reward_margin"] if steps else None,
            "final_reward_accuracy": steps[-1]["reward_accuracy"] if steps else None,
        }
        final = Path(adapters_dir) / f"round-{round_id:04d}"
        staging = work / "adapter"
        peft_model.save_pretrained(staging)  # PEFT's standard format: adapter_config.json + adapter_model.safetensors
        if sft_hub_id:
            # Named after saving: PEFT would look the Hub id up while saving, which an offline machine cannot.
            config_file = staging / "adapter_config.json"
            config = json.loads(config_file.read_text())
            config["base_model_name_or_path"] = sft_hub_id
            config_file.write_text(json.dumps(config, indent=2))
        (staging / "playground.json").write_text(
            json.dumps(
                {"round_id": round_id, "parent_version": parent, "pairs": [p["id"] for p in pairs],
                 "hyperparams": hyperparams, "metrics": metrics, "sft_model": sft_dir, "sft_hub_id": sft_hub_id},
                indent=2,
            )
        )
        _prepare_for_serving(staging)
        os.replace(staging, final)  # atomic: the server never sees a half-written adapter folder
        version = store.finish_round(round_id, str(final), metrics)
        if store.serving_version() == version:
            log.info("Round %d done: version %d serving (%s).", round_id, version, metrics)
        else:
            log.info("Round %d done: version %d published; it does not serve because the serving version changed "
                     "during the round (%s).", round_id, version, metrics)
    except BaseException as error:
        store.fail_round(round_id, f"{type(error).__name__}: {error}")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Published first, measured after: the drift evaluation never delays the version (drift.py).
    _evaluate_published(store, version, peft_model, tokenizer, settings)
    return version


def _evaluate_published(store: Store, version: int, peft_model, tokenizer, settings: RoundSettings) -> None:
    """The new version's drift, with the model still in memory; a failure is logged, and the idle trainer tries
    again from the files (the version is published either way)."""
    from . import drift

    try:
        plan = drift.plan_of(settings)
        if plan is not None:
            peft_model.set_adapter("default")  # trl may leave another adapter active after a round
            drift.evaluate_and_store(store, version, peft_model, tokenizer, plan, adapter=True)
    except Exception as error:  # never lose a trained round over a measurement
        log.warning("Could not measure the drift of v%d now (the idle trainer retries): %s", version, error)


def _prepare_for_serving(adapter_dir: Path) -> None:
    """What the onnx serving runtime needs for this version (its adapter format, beside PEFT's files), made here so
    the server's hot swap only loads it. Without onnxruntime installed, or if it fails, the server converts on
    demand or serves with torch: the version is published either way."""
    from . import runtime

    if not runtime.installed():
        return
    try:
        runtime.convert_adapter(adapter_dir)
    except Exception as error:  # never lose a trained round over a serving format
        log.warning("Could not prepare the onnx runtime's adapter for %s: %s", adapter_dir, error)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def exit_with_parent(parent_pid: int, interval: float = 2.0) -> None:
    """End this process (as SIGTERM would) when the app that started it is gone, even after a kill -9 of the app:
    an orphaned trainer would hold memory and CPU, and keep training for a server that no longer exists."""
    import threading

    def check():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        log.warning("The app (pid %d) is gone; the trainer stops.", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=check, name="parent-watch", daemon=True).start()


def watch(store: Store, adapters_dir: Path, sft_dir: str, settings: RoundSettings, *, poll_seconds: float = 2.0,
          sft_hub_id: str | None = None) -> None:
    """The trainer process's loop: run a round whenever enough pairs wait or one is requested.

    A failed round is logged and recorded (its pairs stay pending); the loop goes on. SIGTERM ends the loop; a
    round in progress is marked failed on the way out (its pairs stay pending), so the next start trains them.
    What the trainer is doing goes to the store (`Store.trainer_state`) whenever it changes.
    """
    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    for interrupted in store.recover_interrupted_rounds():
        log.warning("Round %d was interrupted (trainer killed); its pairs are still pending.", interrupted["id"])
    import torch

    from . import drift

    failures = 0
    said: dict = {}
    torch.set_num_threads(settings.train_threads)
    try:
        plan = drift.plan_of(settings)
    except Exception as error:  # a missing or broken prompt file must not stop training
        log.error("No drift evaluation: %s", error)
        plan = None

    def say(state: str, **facts) -> None:
        nonlocal said
        now = {"state": state, "pid": os.getpid(), "min_pairs": settings.min_pairs,
               "pairs_per_voter": settings.pairs_per_voter, **facts}
        if now != said:
            store.set_trainer_state(now)
            said = now

    try:
        while True:
            forced = store.take_round_request()
            # Counted under the per-voter cap, like select_pairs takes them: one voter alone cannot start a round.
            pending = eligible_pair_count(store, settings)
            if pending and (forced or pending >= settings.min_pairs):
                say("training", pending=pending)
                try:
                    run_round(store, adapters_dir, sft_dir, settings, force=True, sft_hub_id=sft_hub_id)
                    failures = 0
                except Exception as error:  # a crashed round must not end the trainer
                    log.exception("Round failed: %s", error)
                    failures += 1
                    say("waiting", pending=eligible_pair_count(store, settings), failures=failures)
            elif plan is not None and store.versions_missing_eval(plan.key):
                # Idle: measure a version that has no drift evaluation yet (version 0 for the baseline, versions
                # from before, one whose evaluation was interrupted), one a turn, so a round never waits long.
                say("evaluating", pending=pending)
                drift.evaluate_one_missing(store, sft_dir, plan)
                continue
            else:
                say("waiting", pending=pending, failures=failures)
            time.sleep(poll_seconds * min(2**failures, 30))
    finally:
        try:
            say("stopped")
        except Exception:  # the store may be what failed; stopping must not hide the original error
            log.exception("Could not record that the trainer stopped")
