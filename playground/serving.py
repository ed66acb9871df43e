"""Which adapter version the engine serves: the models loaded with the runtime the settings ask for, the store's
serving version kept in the engine (hot swap as new versions appear, rollback), and the fallback to the newest
good version when one is missing or broken.

The store decides which version *should* serve (the trainer publishes, a rollback chooses); this module makes the
engine serve it and says so when it cannot. A version is marked bad only when its own files are missing or
unreadable; a runtime that cannot take it now (a vLLM server restarting, a timeout) is retried with backoff while
the version stays good, and the previous adapter answers meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .generation import AdapterError, Engine
from .models import ModelLoadError, Preset
from .settings import ModelSettings, RoundSettings
from .store import Store

log = logging.getLogger(__name__)


class MissingVersion(AdapterError):
    """A version with no record in the store (never made, or lost by a restore)."""


# Retries of a version the runtime could not take: after 2 s, then twice as long each time, at most a minute apart.
FIRST_RETRY_SECONDS, LONGEST_RETRY_SECONDS = 2.0, 60.0


@dataclass
class Retry:
    """A good version the runtime could not load yet: when to try again, and why it failed."""

    version: int
    error: str
    attempts: int
    at: float  # time.monotonic() of the next try

    def seconds_left(self) -> float:
        return max(0.0, self.at - time.monotonic())


def adapter_problem(path: str | Path | None) -> str | None:
    """What is wrong with an adapter version's own files (missing, incomplete, unreadable), in words; None when
    they read as a PEFT adapter. Only this marks a version bad: whether a runtime takes it is another matter."""
    if not path:
        return "it has no folder"
    folder = Path(path)
    if not folder.is_dir():
        return f"its folder {folder} is missing"
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as error:
        return f"its adapter_config.json cannot be read ({error})"
    if not isinstance(config, dict) or "peft_type" not in config:
        return "its adapter_config.json is not a PEFT adapter's"
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return f"its weights ({weights.name}) are missing"
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as tensors:
            for key in tensors.keys():  # every tensor read whole: a truncated file fails here
                tensors.get_tensor(key)
    except Exception as error:  # safetensors raises its own error types for a damaged file
        return f"its weights cannot be read ({type(error).__name__}: {error})"
    return None


def largest_lora_rank(store: Store | None, rounds: RoundSettings) -> int:
    """The largest LoRA rank this data set may be asked to serve: the rounds' own, or a version's made with other
    settings (a vLLM server started here must take every version a rollback may choose)."""
    ranks = [rounds.lora_r]
    for version in store.versions() if store is not None else []:
        try:
            ranks.append(int(json.loads((Path(version["path"]) / "adapter_config.json").read_text())["r"]))
        except (OSError, ValueError, KeyError, TypeError):  # a broken version is not served: its rank does not matter
            continue
    return max(ranks)


def open_engine(
    models: ModelSettings,
    rounds: RoundSettings,
    preset: Preset,
    data_dir: Path,
    log_dir: Path,
    serve_while_building: bool = False,
    store: Store | None = None,
) -> Engine:
    """Load both models (minutes on a first start that converts GGUF weights) on the runtime the settings ask for;
    `auto` falls back to torch when the onnx runtime cannot take the models. `store`: the data set whose versions
    the engine will serve (their LoRA ranks size a vLLM server started here)."""
    from . import runtimes
    from .runtimes.vllm.server import VllmOptions

    runtime = runtimes.resolve(models.runtime, models.device)
    vllm = VllmOptions(
        url=models.vllm_url,
        base_url=models.base_vllm_url,
        python=models.vllm_python,
        max_lora_rank=largest_lora_rank(store, rounds),
        log_dir=log_dir,
    )

    def load(runtime: str) -> Engine:
        return Engine.from_preset(
            preset,
            data_dir,
            trust_remote_code=models.trust_remote_code,
            device=models.device,
            precision=models.precision,
            threads=models.serve_threads,
            adapter_targets=tuple(rounds.target_modules),
            runtime=runtime,
            chat_workers=models.chat_workers,
            vllm=vllm,
            serve_while_building=serve_while_building,
        )

    try:
        return load(runtime)
    except (runtimes.RuntimeUnavailable, runtimes.ServingError) as error:
        if models.runtime != "auto":
            raise ModelLoadError(str(error)) from error
        # auto: a model the onnx builder cannot take still serves, slower, with transformers.
        log.warning("The onnx runtime cannot serve these models (%s); serving with torch.", error)
        engine = load("torch")
        engine.runtime_note = f"onnx runtime unavailable: {error}"
        return engine


class Serving:
    """The engine and the version it serves. Ready once the engine serves the store's serving version, so a
    restored or rolled-back adapter is loaded before the first answer, never swapped in after it."""

    def __init__(self, store: Store):
        self.store = store
        self.engine: Engine | None = None
        self.owned: Engine | None = None  # an engine this object loaded (closed with it); an attached one is not
        self.ready = False
        self.error: str | None = None  # why the models could not be loaded, for people
        self.retry: Retry | None = None  # a good version the runtime could not load yet
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        self.sync()
        self.ready = True

    def own(self, engine: Engine) -> Engine:
        """Serve with `engine` and close it with this object (an engine open_engine made for it)."""
        self.owned = engine
        self.attach(engine)
        return engine

    def sync(self) -> int:
        """Serve the store's serving version. A version whose files are missing or unreadable is marked bad (with
        the reason) and a missing record skipped: the newest good version below it serves instead. A good version
        the runtime cannot load now is retried with backoff (`retry` says when and why) while the adapter serving
        keeps answering. Returns the version now serving."""
        while True:
            wanted = self.store.serving_version()
            retry = self.retry
            if retry is not None and retry.version == wanted and retry.seconds_left() > 0:
                return self.engine.adapter_version
            try:
                version = self.serve(wanted)
                if retry is not None:
                    log.info("Adapter v%d serves now (after %d failed tries).", version, retry.attempts)
                self.retry = None
                return version
            except MissingVersion as error:  # its record is gone (a restore that lost it): nothing to mark bad
                log.error("%s; the newest good version below it serves.", error)
                self.store.fall_back_below(wanted)
            except AdapterError as error:
                row = self.store.version(wanted)
                problem = adapter_problem(row["path"] if row else None)
                if problem is not None:
                    log.error(
                        "%s; its files are broken (%s): marked bad, the last good version serves.", error, problem
                    )
                    self.store.mark_version_bad(wanted, problem)
                    continue
                self.retry = self._retry_later(wanted, error, retry)
                return self.engine.adapter_version

    def _retry_later(self, version: int, error: Exception, before: Retry | None) -> Retry:
        attempts = before.attempts + 1 if before is not None and before.version == version else 1
        delay = min(FIRST_RETRY_SECONDS * 2 ** (attempts - 1), LONGEST_RETRY_SECONDS)
        log.warning(
            "%s; its files are fine, so it stays good: retrying in %.0f s (v%d answers meanwhile).",
            error,
            delay,
            self.engine.adapter_version,
        )
        return Retry(version, str(error), attempts, time.monotonic() + delay)

    def recheck(self, version: int) -> str | None:
        """Check a version's files again (an admin's `versions --recheck N`): readable ones make a version marked
        bad good again (a runtime outage once marked versions bad for ever). Returns what is still wrong, or None."""
        row = self.store.version(version)
        if row is None:
            raise MissingVersion(f"Adapter version {version} does not exist.")
        problem = adapter_problem(row["path"])
        if problem is None and row["state"] == "bad":
            self.store.mark_version_good(version)
            log.info("Adapter v%d re-checked: its files read fine, so it is good again.", version)
        return problem

    def serve(self, version: int) -> int:
        """Load `version` into the engine (0: no adapter), whatever the store serves: what `generate --version`
        uses. Raises AdapterError (nothing changes) when its folder is missing or does not load."""
        if version == self.engine.adapter_version:
            return version
        if version == 0:
            self.engine.use_adapter(0, None)
            log.info("Serving no adapter (version 0).")
            return 0
        row = self.store.version(version)
        if row is None:
            raise MissingVersion(f"Adapter version {version} does not exist.")
        path = row["path"]
        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterError(f"Adapter v{version}: folder {path} is missing or incomplete")
        self.engine.use_adapter(version, path)
        log.info("Now serving adapter v%d from %s.", version, path)
        return version

    def rollback(self, version: int) -> int:
        """Serve another version (0 = none); with the models loaded, the swap happens before this returns. A version
        marked bad is re-checked first (`recheck`) and served if its files read fine. Returns the version serving
        afterwards (an older one if the asked one's folder turned out broken)."""
        row = self.store.version(version) if version else None
        if row is not None and row["state"] == "bad":
            self.recheck(version)
        self.store.set_serving_version(version)  # refuses a version that does not exist, or is still bad
        if self.retry is not None and self.retry.version == version:
            self.retry.at = time.monotonic()  # asked for now: no waiting out the backoff
        return self.sync() if self.ready else self.store.serving_version()

    def follow(self, interval: float = 2.0, also: Callable[[], None] | None = None) -> None:
        """Hot swap: poll the store and serve each new (or rolled-back) version as it appears; `also` runs on each
        poll (the front door restarts a trainer that died on its own)."""

        def loop():
            while not self._stop.wait(interval):
                try:
                    self.sync()
                except Exception:  # never let a bad adapter kill the follower; the next poll retries
                    log.exception("Adapter sync failed")
                if also is not None:
                    also()

        if self._follower is None:
            self._follower = threading.Thread(target=loop, name="adapter-follower", daemon=True)
            self._follower.start()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.stop()
        if self.owned is not None:
            self.owned.close()
