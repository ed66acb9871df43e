"""Which adapter version the engine serves: the models loaded with the runtime the settings ask for, the store's
serving version kept in the engine (hot swap as new versions appear, rollback), and the fallback to the newest
good version when one is missing or broken.

The store decides which version *should* serve (the trainer publishes, a rollback chooses); this module makes the
engine serve it and says so when it cannot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .generation import AdapterError, Engine
from .models import ModelLoadError, Preset
from .settings import ModelSettings, RoundSettings
from .store import Store

log = logging.getLogger(__name__)


class MissingVersion(AdapterError):
    """A version with no record in the store (never made, or lost by a restore)."""


def open_engine(
    models: ModelSettings,
    rounds: RoundSettings,
    preset: Preset,
    data_dir: Path,
    log_dir: Path,
    serve_while_building: bool = False,
) -> Engine:
    """Load both models (minutes on a first start that converts GGUF weights) on the runtime the settings ask for;
    `auto` falls back to torch when the onnx runtime cannot take the models."""
    from . import runtimes
    from .runtimes.vllm.server import VllmOptions

    runtime = runtimes.resolve(models.runtime, models.device)
    vllm = VllmOptions(
        url=models.vllm_url,
        base_url=models.base_vllm_url,
        python=models.vllm_python,
        max_lora_rank=rounds.lora_r,
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
        """Serve the store's serving version. A corrupt adapter is marked bad (with the reason) and a missing
        record skipped; the newest good version below it serves instead. Returns the version now serving."""
        while True:
            wanted = self.store.serving_version()
            try:
                return self.serve(wanted)
            except MissingVersion as error:  # its record is gone (a restore that lost it): nothing to mark bad
                log.error("%s; the newest good version below it serves.", error)
                self.store.fall_back_below(wanted)
            except AdapterError as error:
                log.error("%s; skipping it, the last good version serves.", error)
                self.store.mark_version_bad(wanted, str(error))

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
        """Serve another version (0 = none); with the models loaded, the swap happens before this returns.
        Returns the version serving afterwards (an older one if the asked one's folder turned out broken)."""
        self.store.set_serving_version(version)
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
