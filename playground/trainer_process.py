"""The trainer as a child process of the app: started with it, restarted after a pause if it dies on its own,
stopped with it. The trainer exits by itself when the app is gone, even after a kill -9 of the app
(`training.exit_with_parent`), so it never trains for a server that no longer exists."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from .models import PRESETS, Preset
from .settings import ModelSettings, RoundSettings

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


def trainer_command(models: ModelSettings, preset: Preset, data_dir: Path, rounds: RoundSettings) -> list[str]:
    """The trainer process, with the complete settings: the models as resolved here (so it opens the same data set)
    and every round setting."""
    # With base and sft both given, the preset only names the pair ("custom"): any known name resolves to them.
    name = preset.name if preset.name in PRESETS else "auto"
    # persist off: the app copies what the trainer writes (the trainer's records reach the change log).
    models = replace(
        models, preset=name, base=preset.base, sft=preset.sft, data_dir=str(data_dir), persist="off", hub_dataset=None
    )
    settings = {"models": asdict(models), "rounds": rounds.as_dict()}
    command = [sys.executable, "-m", "playground", "-q", "train", "--watch", "--parent-pid", str(os.getpid())]
    return [*command, "--settings-json", json.dumps(settings)]


def ablation_command(
    models: ModelSettings, preset: Preset, data_dir: Path, rounds: RoundSettings, oracle: str
) -> list[str]:
    """The ablation on the data set's recorded feedback (`ablate`), with the app's complete settings."""
    command = trainer_command(models, preset, data_dir, rounds)
    return [sys.executable, "-m", "playground", "-q", "ablate", "--oracle", oracle, *command[-2:]]


class TrainerProcess:
    def __init__(self, command: Callable[[], list[str]], log_file: Path, restart_backoff: float = 30.0):
        self.command, self.log_file = command, Path(log_file)
        self.restart_backoff = restart_backoff  # seconds between restarts of a trainer that keeps dying
        self.process: subprocess.Popen | None = None
        self.exits: list[tuple[float, int]] = []  # (time, exit code) of trainers that died on their own
        self.started = 0.0
        self.wanted = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.wanted = True
        if self.alive():
            return
        self.started = time.time()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as handle:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self.command(), stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy()
            )
        log.info("Trainer started (pid %d), log: %s", self.process.pid, self.log_file)

    def restart_if_dead(self) -> None:
        """Called periodically: notes a trainer that died on its own, and starts a new one after the pause."""
        if not self.wanted or self.process is None or self.process.poll() is None:
            return
        if not self.exits or self.exits[-1][0] < self.started:
            self.exits.append((time.time(), self.process.returncode))
            log.error("The trainer exited with code %s; see %s.", self.process.returncode, self.log_file)
        if time.time() - self.exits[-1][0] >= self.restart_backoff:
            self.start()

    def stop(self, timeout: float = 30) -> None:
        self.wanted = False
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()  # the trainer marks a round in progress failed; its pairs stay pending
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
