"""The trainer process's loop (`python -m playground train --watch`): a round whenever enough feedback waits or one
is requested, drift measurements and a reward model a round left for later while idle, and an end when the app that
started it is gone.

The trainer runs in its own OS process, so a round never competes with the server's Python interpreter and a crash
or kill -9 of the trainer cannot take the server down. It communicates only through the store and the adapter
folders.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from ..settings import RoundSettings
from ..store import Store
from .examples import eligible_counts, request_honoured, round_due, round_waiting
from .runner import reward_model_missing, run_round, train_missing_reward_model

log = logging.getLogger(__name__)
# A round that fails this many times in a row with the same error stops being retried: a deterministic failure (a
# broken setting, a file it cannot read) would otherwise load the models and fail again on every poll, for ever.
SAME_FAILURE_LIMIT = 3


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


def watch(
    store: Store,
    adapters_dir: Path,
    sft_dir: str,
    settings: RoundSettings,
    *,
    poll_seconds: float = 2.0,
    sft_hub_id: str | None = None,
) -> None:
    """The trainer process's loop: run a round whenever enough feedback waits or one is requested.

    A failed round is logged and recorded (its feedback stays pending); the loop goes on. SIGTERM ends the loop; a
    round in progress is marked failed on the way out (its feedback stays pending), so the next start trains it.
    What the trainer is doing goes to the store (`Store.trainer_state`) whenever it changes.
    """

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    for interrupted in store.recover_interrupted_rounds():
        log.warning("Round %d was interrupted (trainer killed); its feedback is still pending.", interrupted["id"])
    import torch

    from .. import drift

    failures, last_error = 0, None
    said: dict = {}
    tried: set[int] = set()  # versions whose missing reward model the idle trainer already trained (or tried)
    torch.set_num_threads(settings.train_threads)
    try:
        plan = drift.plan_of(settings)
    except Exception as error:  # a missing or broken prompt file must not stop training
        log.error("No drift evaluation: %s", error)
        plan = None

    def say(state: str, **facts) -> None:
        nonlocal said
        now = {
            "state": state,
            "pid": os.getpid(),
            "min_pairs": settings.min_pairs,
            "pairs_per_voter": settings.pairs_per_voter,
            "sft_weight": settings.sft_weight,
            "rating_weight": settings.rating_weight,
            **facts,
        }
        if now != said:
            store.set_trainer_state(now)
            said = now

    try:
        while True:
            request = store.take_round_request()
            forced = request_honoured(request, settings)
            if request is not None and not forced:
                log.info(
                    "A visitor asked for a round: it waits for %d pieces of feedback under the per-voter cap "
                    "(only the admin token starts one early).",
                    settings.min_pairs,
                )
            # Counted under the per-voter cap, like select_feedback takes them: one voter alone cannot start a round.
            waiting = eligible_counts(store, settings)
            pending = sum(waiting.values())
            stuck = failures >= SAME_FAILURE_LIMIT and not forced
            if failures >= SAME_FAILURE_LIMIT and forced:
                log.info("A round was asked for: trying once more after %d failed rounds.", failures)
            if not stuck and round_due(pending, settings.min_pairs, forced):
                say("training", pending=pending, waiting=waiting)
                try:
                    run_round(store, adapters_dir, sft_dir, settings, force=True, sft_hub_id=sft_hub_id)
                    failures, last_error = 0, None
                except Exception as error:  # a crashed round must not end the trainer
                    log.exception("Round failed: %s", error)
                    error_text = f"{type(error).__name__}: {error}"
                    failures = failures + 1 if error_text == last_error else 1
                    last_error = error_text
                    waiting = eligible_counts(store, settings)
                    if failures >= SAME_FAILURE_LIMIT:
                        log.error(
                            "Rounds failed %d times in a row with the same error; no more rounds until the trainer "
                            "restarts or a round is asked for: %s",
                            failures,
                            error_text,
                        )
                    say("waiting", pending=sum(waiting.values()), waiting=waiting, failures=failures)
            elif plan is not None and store.versions_missing_eval(plan.key):
                # Idle: measure a version that has no drift evaluation yet (version 0 for the baseline, versions
                # from before, one whose evaluation was interrupted), one a turn, so a round never waits long.
                say("evaluating", pending=pending, waiting=waiting)

                try:
                    drift.evaluate_one_missing(
                        store, sft_dir, plan, interrupt=lambda stuck=stuck: round_waiting(store, settings, stuck)
                    )
                except drift.EvaluationInterrupted:
                    log.info("Drift evaluation interrupted: a round is due (the version is measured later).")
                continue
            elif settings.reward_model and (version := reward_model_missing(store)) and version not in tried:
                # Idle: the newest version's reward model, left for later by a round that had another waiting.
                say("training reward model", pending=pending, waiting=waiting, version=version)
                # (a stuck trainer's reward model gives way only to a round asked for, or it would restart for ever)
                if train_missing_reward_model(store, version, sft_dir, settings, sft_hub_id, stuck) != "interrupted":
                    tried.add(version)  # once: a failure is logged and not retried on every poll
                continue
            elif stuck:
                say("stuck", pending=pending, waiting=waiting, failures=failures, error=last_error)
            else:
                say("waiting", pending=pending, waiting=waiting, failures=failures)
            time.sleep(poll_seconds * min(2 ** min(failures, SAME_FAILURE_LIMIT), 30))
    finally:
        try:
            say("stopped")
        except Exception:  # the store may be what failed; stopping must not hide the original error
            log.exception("Could not record that the trainer stopped")
