"""One round: the chosen feedback → its stages on one LoRA adapter → a new adapter version, published atomically, then
measured (drift).

Each round warm-starts from the serving adapter (its parent) and trains on the new feedback plus a replay of earlier
examples, so what earlier feedback taught is kept while new feedback is added. The stages run in order on that one
adapter: instruction alignment first (SFT on demonstrations), then preference alignment building on it (DPO on
pairs, KTO on ratings); see stages.py for their losses, references and weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .. import reward_models
from ..models import load_policy, load_tokenizer
from ..settings import RoundSettings
from ..store import Store
from .cores import SpareCores, spare_cores_callback
from .examples import (
    KIND_OF,
    KINDS_IN_ORDER,
    Selection,
    key_of,
    round_due,
    round_waiting,
    select_feedback,
    stages_of,
    trl_rows,
)
from .reward_model import save as save_reward_model
from .reward_model import train_reward_model, warm_start_from
from .rl import prompt_rows, reward_function
from .stages import Stage, lora_config, stage_steps

log = logging.getLogger(__name__)


def run_round(
    store: Store,
    adapters_dir: Path,
    sft_dir: str,
    settings: RoundSettings | None = None,
    *,
    force: bool = False,
    sft_hub_id: str | None = None,
    stages: tuple[str, ...] | None = None,
) -> int | None:
    """Train one round if enough new feedback waits (or `force`); returns the new version, or None if idle.

    `stages`: which stages train (default: those the weights turn on; an ablation picks its own). The adapter goes
    to `adapters_dir/round-NNNN`; its `base_model_name_or_path` is `sft_hub_id` when the SFT model has one (so the
    published adapter loads elsewhere), else the SFT folder."""
    settings = settings or RoundSettings()
    stages = stages_of(settings) if stages is None else tuple(stages)
    selection = select_feedback(store, settings, stages)
    if not round_due(selection.new_count, settings.min_pairs, force):
        return None

    import torch
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import set_seed

    torch.set_num_threads(settings.train_threads)
    parent = store.serving_version()
    parent_path = store.version(parent)["path"] if parent else None
    sizes = {name: len(selection.rows(KIND_OF[name])) for name in stages if selection.rows(KIND_OF[name])}
    hyperparams = settings.as_dict() | selection.counts() | {"stages": list(sizes)}
    config = lora_config(settings)
    # Warm start from the parent, unless the settings changed the adapter's shape since (its weights would not fit).
    fresh_because = adapter_shape_change(parent_path, config) if parent_path else None
    hyperparams |= _start(parent, not parent_path or bool(fresh_because), fresh_because, settings)
    keys = {kind: [key_of(kind, row) for row in selection.rows(kind)] for kind in KINDS_IN_ORDER}
    round_id = store.start_round(
        parent,
        keys["pairs"],
        hyperparams,
        os.getpid(),
        demonstration_ids=keys["demonstrations"],
        rating_keys=keys["ratings"],
    )
    steps_total = sum(stage_steps(name, n, settings) for name, n in sizes.items())
    store.set_round_progress(round_id, 0, steps_total)
    log.info("Round %d: %s, parent v%d, %d steps.", round_id, _described(selection), parent, steps_total)
    work = Path(tempfile.mkdtemp(prefix=f".round-{round_id}-", dir=_ensure(Path(adapters_dir))))
    try:
        reward = None  # the rlhf route: (reward model, its tokenizer, figures), trained before the policy loads
        if "grpo" in sizes:
            cores = SpareCores(settings.train_threads, settings.idle_train_threads)
            cores.adjust()
            pairs = trl_rows("pairs", selection.rows("pairs"), load_tokenizer(sft_dir), settings.max_length)
            reward = train_reward_model(
                pairs, sft_dir, settings, work / "reward", warm_start_from(parent_path, settings), []
            )
        model, tokenizer = load_policy(sft_dir)
        set_seed(settings.train_seed)  # the LoRA initialisation
        peft_model = get_peft_model(model, config)
        if parent_path and not fresh_because:
            try:
                state = load_file(str(Path(parent_path) / "adapter_model.safetensors"))
                result = set_peft_model_state_dict(peft_model, state, adapter_name="default")
                if getattr(result, "unexpected_keys", None):
                    fresh_because = f"its weights do not fit this model ({', '.join(result.unexpected_keys[:3])})"
            except (OSError, RuntimeError, ValueError) as error:  # unreadable, or shapes that do not fit
                fresh_because = f"its weights could not be loaded ({type(error).__name__}: {error})"
            if fresh_because:
                hyperparams |= _start(parent, True, fresh_because, settings)
                store.note_round(round_id, {k: hyperparams[k] for k in ("warm_start", "reference_version")})
                model, tokenizer = load_policy(sft_dir)  # a half-done load may have written into the adapter
                set_seed(settings.train_seed)
                peft_model = get_peft_model(model, config)
        if fresh_because:
            # A warm start that cannot happen would fail every round, for ever: this round starts afresh (what
            # earlier rounds taught comes back only through the replay) and says so.
            log.warning("Round %d starts from a fresh adapter, not from v%d: %s.", round_id, parent, fresh_because)
        fit_start, done, figures = time.perf_counter(), 0, {}
        cores = SpareCores(settings.train_threads, settings.idle_train_threads)
        for name in sizes:
            rows = trl_rows(KIND_OF[name], selection.rows(KIND_OF[name]), tokenizer, settings.max_length)
            if name == "grpo":
                stage = Stage(name, prompt_rows(rows, settings), reward=reward_function(*reward[:2]))
            else:
                stage = Stage(name, rows)
            cores.adjust()  # the reference log-probs are computed before the first step
            callbacks = [_progress(store, round_id, name, done, steps_total), spare_cores_callback(cores)]
            figures[name] = stage.train(peft_model, tokenizer, settings, work / name, callbacks)
            done += figures[name]["steps"]
        fit_seconds = time.perf_counter() - fit_start  # tokenizing, reference log-probs and training, every stage
        peft_model.eval()
        metrics = _metrics(store.round_steps(round_id), figures, fit_seconds)
        final = Path(adapters_dir) / f"round-{round_id:04d}"
        staging = work / "adapter"
        peft_model.save_pretrained(staging)  # PEFT's standard format: adapter_config.json + adapter_model.safetensors
        if reward is not None:  # published with the version it rewarded
            save_reward_model(reward[0], reward_models.folder_of(staging), reward[2], sft_hub_id)
            metrics["reward_model"] = reward[2]
            reward = None
        if sft_hub_id:
            # Named after saving: PEFT would look the Hub id up while saving, which an offline machine cannot.
            config_file = staging / "adapter_config.json"
            config = json.loads(config_file.read_text())
            config["base_model_name_or_path"] = sft_hub_id
            config_file.write_text(json.dumps(config, indent=2))
        (staging / "playground.json").write_text(
            json.dumps(
                {
                    "round_id": round_id,
                    "parent_version": parent,
                    **keys,
                    "hyperparams": hyperparams,
                    "metrics": metrics,
                    "sft_model": sft_dir,
                    "sft_hub_id": sft_hub_id,
                },
                indent=2,
            )
        )
        _prepare_for_serving(staging)
        os.replace(staging, final)  # atomic: the server never sees a half-written adapter folder
        version = store.finish_round(round_id, str(final), metrics)
        if store.serving_version() == version:
            log.info("Round %d done: version %d serving (%s).", round_id, version, metrics)
        else:
            log.info(
                "Round %d done: version %d published; it does not serve because the serving version changed "
                "during the round (%s).",
                round_id,
                version,
                metrics,
            )
    except BaseException as error:
        # The trainer stopped mid-round (SIGTERM, Ctrl-C) is what a kill -9 is once recovered: 'interrupted'.
        stopped = isinstance(error, (SystemExit, KeyboardInterrupt))
        store.fail_round(round_id, "interrupted" if stopped else f"{type(error).__name__}: {error}")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Published first, measured after: the drift evaluation never delays the version (drift.py).
    cores.adjust()
    _evaluate_published(store, version, peft_model, tokenizer, settings)
    # The reward model, after the version serves (it never delays the answers of a `dpo` round); the `rlhf` route
    # trained it before its RL stage, inside the version.
    del peft_model, model  # its memory is the reward model's now
    if settings.reward_model and not reward_models.exists(final) and selection.rows("pairs"):
        # Only while no round waits: a round is what people wait for, the reward model can follow it (the idle
        # trainer trains the newest version's when it is missing: watch.py).
        if round_waiting(store, settings):
            log.info("Version %d's reward model waits: a round is due first.", version)
        else:
            cores.adjust()
            rows = trl_rows("pairs", selection.rows("pairs"), tokenizer, settings.max_length)
            _publish_reward_model(store, version, final, rows, sft_dir, parent_path, settings, sft_hub_id)
    torch.set_num_threads(settings.train_threads)
    return version


def _start(parent: int | None, fresh: bool, reason: str | None, settings: RoundSettings) -> dict:
    """What a round starts from and measures against: `warm_start` {parent, fresh, reason}, and `reference_version`,
    the version its preference stages' reference is (0: the SFT model; stages.reference_for)."""
    previous = settings.dpo_reference == "previous" and not fresh and parent
    return {
        "warm_start": {"parent": parent, "fresh": fresh, "reason": reason},
        "reference": settings.dpo_reference,
        "reference_version": parent if previous else 0,
    }


def adapter_shape_change(parent_path: str | Path, config) -> str | None:
    """Why the adapter in `parent_path` cannot warm-start an adapter of LoRA `config` (its rank or its target modules
    differ: the weights have other shapes, or other layers), in words; None when it can."""
    try:
        parent = json.loads((Path(parent_path) / "adapter_config.json").read_text())
    except (OSError, ValueError) as error:
        return f"its adapter_config.json could not be read ({error})"
    changes = []
    if parent.get("r") != config.r:
        changes.append(f"the LoRA rank changed ({parent.get('r')} → {config.r})")
    before = parent.get("target_modules") or []
    before = {before} if isinstance(before, str) else set(before)
    if before != set(config.target_modules):
        changes.append(
            f"the target modules changed ({', '.join(sorted(before))} → {', '.join(sorted(config.target_modules))})"
        )
    return "; ".join(changes) or None


def _described(selection: Selection) -> str:
    return ", ".join(
        f"{len(selection.new.get(kind, []))} new + {len(selection.replay.get(kind, []))} replayed {kind}"
        for kind in KINDS_IN_ORDER
        if selection.rows(kind)
    )


def _progress(store: Store, round_id: int, stage: str, offset: int, total: int):
    """A trl callback that logs the stage's steps (numbered across the round) and the round's progress."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                store.log_step(round_id, offset + state.global_step, logs, stage)

        def on_step_end(self, args, state, control, **kwargs):
            store.set_round_progress(round_id, offset + state.global_step, total)

    return Progress()


def _metrics(steps: list[dict], figures: dict[str, dict], fit_seconds: float) -> dict:
    """A version's figures: each stage's last logged loss, DPO's last reward margin and accuracy, the time."""
    last = {
        stage: [s for s in steps if s["stage"] == stage][-1]
        for stage in figures
        if any(s["stage"] == stage for s in steps)
    }
    dpo = last.get("dpo", {})
    final = dpo or (steps[-1] if steps else {})
    # The stage the version's headline figures come from: the preference stage of its route.
    main = figures.get("dpo") or figures.get("grpo") or list(figures.values())[-1]
    rl = (last.get("grpo") or {}).get("extra") or {}
    return {
        "train_loss": main["train_loss"],
        "steps": sum(f["steps"] for f in figures.values()),
        "seconds": sum(f["seconds"] for f in figures.values()),
        "fit_seconds": fit_seconds,
        "stage_seconds": {stage: f["seconds"] for stage, f in figures.items()},
        "final_loss": final.get("loss"),
        **{f"final_loss_{stage}": row["loss"] for stage, row in last.items()},
        "final_reward_margin": dpo.get("reward_margin"),
        "final_reward_accuracy": dpo.get("reward_accuracy"),
        # rlhf: the reward model's mean score of the last step's samples, and their KL to the SFT model
        **({"final_rl_reward": rl.get("reward"), "final_kl": rl.get("kl")} if "grpo" in last else {}),
    }


def _evaluate_published(store: Store, version: int, peft_model, tokenizer, settings: RoundSettings) -> None:
    """The new version's drift, with the model still in memory; a failure is logged, and the idle trainer tries
    again from the files (the version is published either way)."""
    from .. import drift

    try:
        plan = drift.plan_of(settings)
        if plan is not None:
            peft_model.set_adapter("default")  # trl may leave another adapter active after a round
            drift.evaluate_and_store(
                store,
                version,
                peft_model,
                tokenizer,
                plan,
                adapter=True,
                interrupt=lambda: round_waiting(store, settings),
            )
    except drift.EvaluationInterrupted:
        log.info("The drift of v%d is measured later: a round is due first.", version)
    except Exception as error:  # never lose a trained round over a measurement
        log.warning("Could not measure the drift of v%d now (the idle trainer retries): %s", version, error)


def reward_model_missing(store: Store) -> int | None:
    """The newest ready version that learned from pairs and has no reward model (its round left it for later), or
    None. Older versions are not caught up: the newest one's reward model learned from what they did (replay)."""
    ready = [v for v in store.versions() if v["state"] == "ready"]
    newest = ready[-1] if ready else None
    if newest and newest["learned_from"]["pairs"] and not reward_models.exists(newest["path"]):
        return newest["version"]
    return None


def train_missing_reward_model(
    store: Store,
    version: int,
    sft_dir: str,
    settings: RoundSettings,
    sft_hub_id: str | None = None,
    stuck: bool = False,
) -> str:
    """Train a published version's reward model on the pairs its round trained on (the idle trainer's catch-up);
    what became of it (`_publish_reward_model`)."""
    row = store.version(version)
    trained = json.loads((Path(row["path"]) / "playground.json").read_text())
    parent = store.version(row["parent_version"]) if row["parent_version"] else None
    rows = trl_rows("pairs", store.pairs(trained["pairs"]), load_tokenizer(sft_dir), settings.max_length)
    if not rows:
        return "published"  # nothing to learn from: nothing to retry either
    return _publish_reward_model(
        store,
        version,
        Path(row["path"]),
        rows,
        sft_dir,
        parent["path"] if parent else None,
        settings,
        sft_hub_id,
        lambda: round_waiting(store, settings, stuck),
    )


def _publish_reward_model(
    store: Store,
    version: int,
    final: Path,
    rows: list[dict],
    sft_dir: str,
    parent_path: str | None,
    settings: RoundSettings,
    sft_hub_id: str | None,
    waiting=None,
) -> str:
    """Train the version's reward model on the round's pairs (trl rows) and put it in the version's folder
    (atomically); "published", "interrupted" (a round became due: it stopped between steps, and the idle trainer
    trains it later) or "failed" (logged; the version stays as it is)."""
    work = Path(tempfile.mkdtemp(prefix=f".reward-v{version}-", dir=final.parent))
    give_way = _GiveWay(waiting or (lambda: round_waiting(store, settings)))
    try:
        model, _, figures = train_reward_model(
            rows, sft_dir, settings, work / "reward", warm_start_from(parent_path, settings), [give_way.callback()]
        )
        if give_way.stopped:
            log.info("Version %d's reward model stopped: a round is due first (trained later).", version)
            return "interrupted"
        staging = work / "reward-model"
        save_reward_model(model, staging, figures, sft_hub_id)
        os.replace(staging, reward_models.folder_of(final))
        store.set_reward_model(version, figures)
        log.info("Version %d: reward model trained (%s).", version, figures)
        return "published"
    except Exception as error:  # never lose a published version over its reward model
        log.warning("Could not train the reward model of v%d: %s", version, error)
        return "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _GiveWay:
    """A trl callback that ends training between two steps once `waiting()` says a round is due."""

    def __init__(self, waiting):
        self.waiting, self.stopped = waiting, False

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class GiveWay(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if outer.waiting():
                    outer.stopped = control.should_training_stop = True

        return GiveWay()


def _prepare_for_serving(adapter_dir: Path) -> None:
    """What the onnx serving runtime needs for this version (its adapter format, beside PEFT's files), made here so
    the server's hot swap only loads it. Without onnxruntime installed, or if it fails, the server converts on
    demand or serves with torch: the version is published either way."""
    from ..runtimes import onnx_installed

    if not onnx_installed():
        return
    try:
        from ..runtimes.onnx.adapters import convert_adapter

        convert_adapter(adapter_dir)
    except Exception as error:  # never lose a trained round over a serving format
        log.warning("Could not prepare the onnx runtime's adapter for %s: %s", adapter_dir, error)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
