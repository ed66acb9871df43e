"""`Playground`: the front door, and the one object that holds the shared state of a running playground: its
settings, the data set and its store, the models (once loaded), the serving adapter, the trainer process.

The web page, the CLI, the simulated voter and the benchmarks all go through it: for generation (recorded), votes,
the serving version, rounds on demand, exports and the figures. Per-user state (a browser session's current
comparison) stays with the caller and holds only ids.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from . import publishing, voters
from .dashboard import Dashboard
from .data_sets import DataSet
from .generation import Answer, Engine
from .judging import Judging
from .models import ModelLoadError, Preset, hub_id, resolve_preset
from .recording import ChatTurn, Recorded, continue_after, record, recorded
from .serving import Serving, open_engine
from .settings import ModelSettings, RoundSettings, Sampling
from .store import Store, StoreError, durable
from .trainer_process import REPO, TrainerProcess, ablation_command, trainer_command

log = logging.getLogger(__name__)


class Playground:
    def __init__(
        self, models: ModelSettings | None = None, rounds: RoundSettings | None = None, *, engine: Engine | None = None
    ):
        self.models = models or ModelSettings()
        self.round_settings = rounds or RoundSettings()
        self.preset: Preset = resolve_preset(self.models.preset, self.models.base, self.models.sft)
        self.data_dir = self.models.resolved_data_dir()
        self.data_set = DataSet.for_models(self.data_dir, self.preset.base, self.preset.sft)
        self.store: Store = self.data_set.open_store()
        # Before anything is served: the store restored from the durable copy, or copied into an empty one.
        self.durable: durable.DurableLink | None = durable.link(self.store, self.data_set, self.models, self.data_dir)
        self.dashboard = Dashboard(self.store)
        self.serving = Serving(self.store)
        self.judging = Judging(self.store, lambda: self.serving.engine if self.serving.ready else None)
        self.trainer = TrainerProcess(self.trainer_command, self.data_set.trainer_log)
        self._lock = threading.Lock()
        self._ablation: subprocess.Popen | None = None
        if engine is not None:
            self.attach(engine)

    # ---- the durable copy ---------------------------------------------------------------------------------
    def durable_status(self) -> dict | None:
        """How far the durable copy lags (None without one)."""
        return None if self.durable is None else self.durable.status()

    # ---- models -------------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine | None:
        return self.serving.engine

    @property
    def ready(self) -> bool:
        return self.serving.ready

    @property
    def error(self) -> str | None:
        """Why the models could not be loaded (None while loading or once loaded)."""
        return self.serving.error

    @property
    def sft_hub_id(self) -> str | None:
        return hub_id(self.preset.sft)

    def load_models(self, serve_while_building: bool = False) -> Engine:
        """Load both models (a minute or two on a first start that converts GGUF weights) and serve the serving
        version. serve_while_building: answer before the base model's ONNX copy is built (the app does)."""
        engine = open_engine(
            self.models,
            self.round_settings,
            self.preset,
            self.data_dir,
            self.data_set.root,
            serve_while_building,
            store=self.store,
        )
        return self.serving.own(engine)

    def attach(self, engine: Engine) -> None:
        """Serve with `engine` (not closed with the playground); ready once it serves the store's serving version."""
        self.serving.attach(engine)

    def start(self, trainer: bool = True, follow_interval: float = 2.0) -> threading.Thread:
        """Start copying to the durable copy; load the models in the background (callers can use the store
        meanwhile), then follow new versions and start the trainer process. A failure to load ends in `error`, a
        message for people."""
        if self.durable is not None:
            self.durable.start()

        def load():
            try:
                self.load_models(serve_while_building=True)
            except Exception as error:  # the page must say why instead of spinning forever
                self.serving.error = (
                    str(error) if isinstance(error, ModelLoadError) else f"{type(error).__name__}: {error}"
                )
                log.error("Model loading failed: %s", self.serving.error)
                return
            with self._lock:
                if self.serving.stopped:  # closed while loading: start nothing
                    return
                self.follow_versions(follow_interval)
            log.info("Models ready; the app is serving.")
            # A first start builds the base model's ONNX copy while it serves: the trainer (a round's memory and
            # cores) starts once that is done, so the two never peak together.
            self.engine.wait_prepared()
            with self._lock:
                if trainer and not self.serving.stopped:
                    self.trainer.start()

        thread = threading.Thread(target=load, name="load-models", daemon=True)
        thread.start()
        return thread

    # ---- generation, recorded -----------------------------------------------------------------------------
    def compare(
        self,
        prompt: str,
        sampling: Sampling,
        session_id: str,
        category: str | None = None,
        *,
        chat: ChatTurn | None = None,
    ) -> Iterator[tuple[dict[str, Answer], Recorded | None]]:
        """Stream the three arms; the last item carries the stored ids (answers are stored once complete).
        chat: which conversation this turn continues (None: a conversation of one turn)."""
        history, parent = self.continue_after(
            session_id, chat.after if chat else None, chat.continue_from if chat else None
        )
        stream = self.engine.stream(prompt, sampling, history=history)
        yield from self._recorded(stream, prompt, session_id, "compare", category, history, parent, chat)

    def duel(
        self,
        prompt: str,
        sampling: Sampling,
        session_id: str,
        category: str | None = None,
        arms: tuple[str, str] | None = None,
        *,
        chat: ChatTurn | None = None,
    ) -> Iterator[tuple[dict[str, Answer], Recorded | None]]:
        """Answers "a" and "b": two samples of the preference-tuned model (on-policy), or, with `arms`, one answer
        of each of two arms (arms[0] is "a"). chat: as in `compare`."""
        history, parent = self.continue_after(
            session_id, chat.after if chat else None, chat.continue_from if chat else None
        )
        if arms is None:
            stream = self.engine.stream_duel(prompt, sampling, history=history)
        else:
            names = dict(zip(arms, ("a", "b")))
            stream = (
                {names[arm]: answer for arm, answer in answers.items()}
                for answers in self.engine.stream(prompt, sampling, arms, history=history)
            )
        yield from self._recorded(stream, prompt, session_id, "duel", category, history, parent, chat)

    def _recorded(self, stream, prompt, session_id, mode, category, history, parent, chat):
        return recorded(self.store, stream, prompt, session_id, mode, category, history, parent, chat)

    def record(self, prompt: str, answers: dict[str, Answer], session_id: str, mode="compare", **where) -> Recorded:
        """Store a finished turn (recording.record) without streaming it."""
        return record(self.store, prompt, answers, session_id, mode, **where)

    # ---- votes ------------------------------------------------------------------------------------------
    # Votes, ratings and better answers go straight to the store (`playground.store.vote_best(...)`, ...): every
    # committed write wakes the durable copy (store.on_commit), so the front door adds nothing to them. `voter`:
    # who cast the vote ('hf:<user>' or 'ip:<keyed hash>', see voters.py; `voter_of` makes it); None when unknown
    # (the command line, the simulated voter): then the session stands for the voter.
    def continue_after(
        self, session_id: str, comparison_id: int | None, chosen_answer_id: int | None = None
    ) -> tuple[list[dict], dict | None]:
        """(history, the answer it continues with) for the next turn after `comparison_id` (None: a new chat)."""
        return continue_after(self.store, session_id, comparison_id, chosen_answer_id)

    def voter_of(self, username: str | None, address: str | None) -> str | None:
        """The voter to record: the signed-in Hugging Face user, else the keyed hash of the client's address."""
        if username:
            return voters.user_voter(username)
        return voters.address_voter(self.store.voter_salt(), address) if address else None

    # ---- the serving adapter ------------------------------------------------------------------------------
    # serving.py keeps the engine on the store's serving version; these are the front door's names for it.
    def sync_adapter(self) -> int:
        return self.serving.sync()

    def serve(self, version: int) -> int:
        return self.serving.serve(version)

    def rollback(self, version: int) -> int:
        return self.serving.rollback(version)

    def recheck(self, version: int) -> str | None:
        """Check a version's files again; a version marked bad whose files read fine is good again. Returns what is
        still wrong (None: nothing)."""
        return self.serving.recheck(version)

    def follow_versions(self, interval: float = 2.0) -> None:
        """Hot swap each new (or rolled-back) version as it appears; restart a trainer that died on its own."""
        self.serving.follow(interval, also=self.trainer.restart_if_dead)
        self.judging.follow(interval)

    # ---- rounds -------------------------------------------------------------------------------------------
    def trainer_command(self) -> list[str]:
        return trainer_command(self.models, self.preset, self.data_dir, self.round_settings)

    def start_trainer(self) -> None:
        self.trainer.start()

    def stop_trainer(self) -> None:
        self.trainer.stop()

    def trainer_alive(self) -> bool:
        return self.trainer.alive()

    def train_now(self, admin: bool = False) -> None:
        """Ask for a round on whatever feedback waits ("train now"); the trainer takes it at its next poll. With a
        per-voter cap only an admin's request starts one early (training.request_honoured)."""
        self.store.request_round(admin=admin)

    def start_ablation(self, oracle: str) -> str:
        """Start the ablation of this data set's recorded feedback in a process of its own (`ablate`: each objective
        trained from the SFT model on a copy of the store, so chatting goes on and no feedback mixes); its progress
        and result reach the Stages view through the store. Returns what happened, in words."""
        from .oracles import Oracle
        from .processes import pid_alive

        Oracle.parse(oracle)  # a bad oracle is refused here, not in the child
        running = self.store.ablation_progress() or {}
        if (self._ablation is not None and self._ablation.poll() is None) or (
            running.get("current") and pid_alive(running.get("pid"))
        ):
            return "An ablation is already running: its progress shows in the Stages view."
        totals = self.store.feedback_totals()
        if not totals["pairs"]["total"] and not totals["demonstrations"]["total"]:
            return "⚠ No feedback recorded yet: vote or write a better answer first."
        command = ablation_command(self.models, self.preset, self.data_dir, self.round_settings, oracle)
        log_file = self.data_set.root / "ablation.log"
        with open(log_file, "ab") as handle:
            self._ablation = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy()
            )
        self.store.set_ablation_progress(
            {"pid": self._ablation.pid, "done": 0, "total": None, "current": "starting", "started_at": time.time()}
        )
        return f"✓ The ablation started (oracle `{oracle}`, log: {log_file.name}); it takes minutes, chat meanwhile."

    # ---- data out -----------------------------------------------------------------------------------------
    def export(self, what: str = "pairs", path: str | Path | None = None) -> tuple[Path, int]:
        """'pairs', 'demonstrations' or 'ratings' (TRL's formats) or 'votes' (raw) as JSONL (publishing.py), to
        `path` or a fresh download file: (path, rows)."""
        if path is None:
            return publishing.export_file(self.store, what)
        return Path(path), publishing.write_export(self.store, what, path)

    def export_adapter(self, version: int | None, out: str | Path) -> Path:
        """An adapter version (default: the serving one) as a folder that loads elsewhere, with its model card."""
        version = self.store.serving_version() if version is None else version
        return publishing.adapter_folder(
            self.store,
            version,
            out,
            sft_spec=self.preset.sft,
            sft_hub_id=self.sft_hub_id,
            win_rate=self._win_rate(version),
        )

    def export_reward_model(self, version: int | None, out: str | Path) -> Path:
        """A version's reward model (default: the serving one's) as a PEFT folder with its model card."""
        from .reward_export import reward_model_folder

        version = self.store.serving_version() if version is None else version
        return reward_model_folder(self.store, version, out, sft_spec=self.preset.sft, sft_hub_id=self.sft_hub_id)

    def explain(self, comparison_id: int, arm: str, version: int | None = None):
        """DPO's implicit reward of a stored answer, token by token (explain.py), under `version` (default: the
        serving one), scored by the server's own SFT weights."""
        from .explain import explain

        if not self.ready:
            raise StoreError("The models are still loading; try again in a moment.")
        return explain(self.engine, self.store, comparison_id, arm, version)

    # ---- the reward model ----------------------------------------------------------------------------------
    def reward_scores(self, comparison_id: int) -> dict:
        """The serving reward model's scores of a stored turn's answers (judging.py): {"reward_version", "scores":
        {answer_id: score}}; reward_version None before the first reward model."""
        return self.judging.score_comparison(comparison_id)

    def judge_vote(self, vote_id: int) -> str | None:
        """Judge this vote's pairs now (the background judge takes the others) and say whether the reward model agreed
        with it: a vote's reply waits for its own two or three scores at most."""
        self.judging.judge_pending(vote_id=vote_id)
        return self.judging.verdict_of_vote(vote_id)

    def _win_rate(self, version: int) -> dict | None:
        return next((v["vote_win_rate"] for v in self.dashboard.facts()["versions"] if v["version"] == version), None)

    def push(
        self,
        token: str | None,
        dataset_repo: str,
        model_repo: str | None = None,
        *,
        private: bool = True,
        version: int | None = None,
        endpoint: str | None = None,
        reward_model_repo: str | None = None,
    ) -> str:
        """With `token` and only with it (the command line passes `publishing.server_token()`, the page the token it
        decided on); an empty one is refused."""
        version = self.store.serving_version() if version is None else version
        return publishing.push_to_hub(
            self.store,
            token,
            dataset_repo,
            model_repo,
            version,
            sft_spec=self.preset.sft,
            sft_hub_id=self.sft_hub_id,
            private=private,
            win_rate=self._win_rate(version),
            endpoint=endpoint,
            reward_model_repo=reward_model_repo,
        )

    def close(self) -> None:
        with self._lock:
            self.serving.stop()  # a load still running starts nothing
        self.judging.stop()
        self.trainer.stop()
        if self._ablation is not None and self._ablation.poll() is None:
            self._ablation.terminate()
        if self.durable is not None:
            self.durable.stop(flush=True)  # what the trainer wrote last is copied too
        self.serving.close()
