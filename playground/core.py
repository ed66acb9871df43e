"""The one object that holds the shared state: models (engine), the store, the trainer process, the serving adapter.

The web UI, the CLI and the simulated voter all go through `Playground`; per-user state (a browser session's
current comparison) stays with the caller and holds only ids.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .generation import AdapterError, Answer, Engine, Sampling
from .models import Preset
from .store import Store
from .training import RoundSettings

log = logging.getLogger(__name__)


@dataclass
class Recorded:
    """A finished generation as stored: the comparison id and each answer's id (keyed like the answers)."""

    comparison_id: int
    answer_ids: dict[str, int]


class Playground:
    def __init__(self, engine: Engine, store: Store, data_dir: Path, preset: Preset,
                 round_settings: RoundSettings | None = None, trust_remote_code: bool = False):
        self.engine, self.store, self.data_dir, self.preset = engine, store, Path(data_dir), preset
        self.round_settings = round_settings or RoundSettings()
        self.trust_remote_code = trust_remote_code
        self.trainer: subprocess.Popen | None = None
        self.trainer_exits: list[tuple[float, int]] = []  # (time, exit code) of trainers that died on their own
        self._want_trainer = False
        self.trainer_started = 0.0
        self.trainer_restart_backoff = 30.0  # seconds between restarts of a trainer that keeps dying
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None
        self.sync_adapter()

    @classmethod
    def open(cls, preset: Preset, data_dir: Path, *, device="cpu", trust_remote_code=False, precision="auto",
             serve_threads: int | None = None, round_settings: RoundSettings | None = None,
             store: Store | None = None) -> "Playground":
        targets = (round_settings or RoundSettings()).target_modules
        engine = Engine.from_preset(preset, data_dir, trust_remote_code=trust_remote_code, device=device,
                                    precision=precision, threads=serve_threads, adapter_targets=targets)
        return cls(engine, store or Store.open(data_dir), data_dir, preset, round_settings, trust_remote_code)

    # ---- generation, recorded ------------------------------------------------------------------------------
    def compare(self, prompt: str, sampling: Sampling, session_id: str, category: str | None = None
                ) -> Iterator[tuple[dict[str, Answer], Recorded | None]]:
        """Stream the three arms; the last item carries the stored ids (answers are stored once complete)."""
        yield from self._recorded(self.engine.stream(prompt, sampling), prompt, session_id, "compare", category)

    def duel(self, prompt: str, sampling: Sampling, session_id: str, category: str | None = None,
             arms: tuple[str, str] | None = None) -> Iterator[tuple[dict[str, Answer], Recorded | None]]:
        """Answers "a" and "b": two samples of the preference-tuned model (on-policy), or, with `arms`, one answer
        of each of two arms (arms[0] is "a")."""
        if arms is None:
            stream = self.engine.stream_duel(prompt, sampling)
        else:
            names = dict(zip(arms, ("a", "b")))
            stream = ({names[arm]: answer for arm, answer in answers.items()}
                      for answers in self.engine.stream(prompt, sampling, arms))
        yield from self._recorded(stream, prompt, session_id, "duel", category)

    def _recorded(self, stream, prompt, session_id, mode, category):
        answers = {}
        for answers in stream:
            yield answers, None
        yield answers, self.record(prompt, answers, session_id, mode, category)

    def record(self, prompt: str, answers: dict[str, Answer], session_id: str, mode="compare",
               category: str | None = None) -> Recorded:
        comparison = self.store.add_comparison(prompt.strip(), session_id, mode=mode, category=category)
        ids = {}
        for slot, (key, answer) in enumerate(answers.items()):
            ids[key] = self.store.add_answer(
                comparison, answer.arm, slot, text=answer.text, model=answer.model,
                adapter_version=answer.adapter_version, settings=answer.settings, seed=answer.seed,
                prompt_tokens=answer.prompt_tokens, new_tokens=answer.new_tokens, seconds=answer.seconds,
                ttft=answer.ttft, finish_reason=answer.finish_reason,
            )
        return Recorded(comparison, ids)

    # ---- the serving adapter -------------------------------------------------------------------------------
    def sync_adapter(self) -> int:
        """Serve the store's serving version. A missing or corrupt adapter is marked bad (with the reason) and
        the newest good version below it serves instead. Returns the version now serving."""
        while True:
            wanted = self.store.serving_version()
            if wanted == self.engine.adapter_version:
                return wanted
            if wanted == 0:
                self.engine.use_adapter(0, None)
                log.info("Serving no adapter (version 0).")
                return 0
            path = (self.store.version(wanted) or {}).get("path")
            try:
                if not path or not (Path(path) / "adapter_config.json").is_file():
                    raise AdapterError(f"Adapter v{wanted}: folder {path} is missing or incomplete")
                self.engine.use_adapter(wanted, path)
                log.info("Now serving adapter v%d from %s.", wanted, path)
                return wanted
            except AdapterError as error:
                log.error("%s; skipping it, the last good version serves.", error)
                self.store.mark_version_bad(wanted, str(error))

    def follow_versions(self, interval: float = 2.0) -> None:
        """Hot swap: poll the store and serve each new (or rolled-back) version as it appears; also restart a
        trainer process that died on its own."""
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.sync_adapter()
                except Exception:  # never let a bad adapter kill the follower; the next poll retries
                    log.exception("Adapter sync failed")
                self._restart_dead_trainer()

        if self._follower is None:
            self._follower = threading.Thread(target=loop, name="adapter-follower", daemon=True)
            self._follower.start()

    def rollback(self, version: int) -> int:
        self.store.set_serving_version(version)
        return self.sync_adapter()

    # ---- the trainer process -------------------------------------------------------------------------------
    def trainer_command(self) -> list[str]:
        s = self.round_settings
        command = [
            sys.executable, "-m", "playground", "-q", "train", "--watch",
            "--data-dir", str(self.data_dir), "--sft", self.preset.sft, "--base", self.preset.base,
            "--min-pairs", str(s.min_pairs), "--threads", str(s.threads), "--epochs", str(s.epochs),
            "--learning-rate", str(s.learning_rate), "--beta", str(s.beta), "--parent-pid", str(os.getpid()),
            "--batch-size", str(s.batch_size), "--grad-accumulation", str(s.grad_accumulation),
        ]
        return command + (["--trust-remote-code"] if self.trust_remote_code else [])

    def _restart_dead_trainer(self) -> None:
        if not self._want_trainer or self.trainer is None or self.trainer.poll() is None:
            return
        if not self.trainer_exits or self.trainer_exits[-1][0] < self.trainer_started:
            self.trainer_exits.append((time.time(), self.trainer.returncode))
            log.error("The trainer exited with code %s; see %s.", self.trainer.returncode, self.data_dir / "trainer.log")
        if time.time() - self.trainer_exits[-1][0] >= self.trainer_restart_backoff:
            self.start_trainer()

    def start_trainer(self, log_file: Path | None = None) -> None:
        self._want_trainer = True
        if self.trainer is not None and self.trainer.poll() is None:
            return
        self.trainer_started = time.time()
        log_file = log_file or self.data_dir / "trainer.log"
        handle = open(log_file, "ab")
        self.trainer = subprocess.Popen(self.trainer_command(), stdout=handle, stderr=subprocess.STDOUT,
                                        cwd=Path(__file__).resolve().parent.parent, env=os.environ.copy())
        log.info("Trainer started (pid %d), log: %s", self.trainer.pid, log_file)

    def trainer_alive(self) -> bool:
        return self.trainer is not None and self.trainer.poll() is None

    def stop_trainer(self, timeout: float = 30) -> None:
        self._want_trainer = False
        if self.trainer is None:
            return
        if self.trainer.poll() is None:
            self.trainer.terminate()  # the trainer marks a round in progress failed; its pairs stay pending
            try:
                self.trainer.wait(timeout)
            except subprocess.TimeoutExpired:
                self.trainer.kill()
                self.trainer.wait()
        self.trainer = None

    def train_now(self) -> None:
        self.store.request_round()

    def close(self) -> None:
        self._stop.set()
        self.stop_trainer()


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
