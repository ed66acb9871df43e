"""The status line at the top of the page: models loading or failed, what serves (models, runtime, adapter
version), the trainer, the data set, and the durable copy when it lags."""

from __future__ import annotations

from ..core import Playground
from ..models import cached_copy
from .text import code, short_model

# How long the durable copy may trail before the status line says so.
COPY_LAG_SECONDS = 10.0


def status_line(pg: Playground, loading: str) -> str:
    """loading: what the line says while the models load (`loading_message`)."""
    data_set = f"data set {code(pg.data_set.name)}"
    if pg.error:
        return f"✗ **The models could not be loaded.** {code(pg.error)} · {data_set}"
    if not pg.ready:
        return f"**{loading}** The page works meanwhile; answers need the models. · {data_set}"
    engine = pg.engine
    trainer = "trainer running" if pg.trainer_alive() else ("trainer stopped" if pg.trainer.wanted else "no trainer")
    base, sft = (code(short_model(m.name)) for m in (engine.base, engine.sft))
    runtimes = engine.describe()
    runtime = f"runtime {code(engine.runtime)}" + (" (onnx unavailable, see the log)" if engine.runtime_note else "")
    sft_copy = engine.runtimes["sft"]
    if sft_copy.precision_why:  # the onnx runtime chose the SFT copy: say which and why
        how = "measured fastest on this CPU" if sft_copy.precision_why.startswith("calibrated") else "as asked"
        runtime += f" · SFT weights {code(sft_copy.precision)} ({how})"
    if runtimes.get("base") != engine.runtime:
        building = " until its ONNX copy is built" if engine.preparing_roles() == ["base"] else ""
        runtime += f" (base arm: {code(runtimes.get('base'))}{building})"
    problem = engine.problem
    if problem:
        return (
            f"⚠ **Serving problem:** {problem} · base {base} · SFT {sft} · {runtime} · adapter "
            f"v{engine.adapter_version} · {trainer} · {data_set}"
        )
    retry = pg.serving.retry
    if retry is not None:
        return (
            f"⚠ **Adapter v{retry.version} waits for the runtime:** it could not be loaded ({code(retry.error)}); "
            f"its files are fine, so it stays good and is tried again in {retry.seconds_left():.0f} s "
            f"(try {retry.attempts + 1}) · base {base} · SFT {sft} · {runtime} · adapter v{engine.adapter_version} "
            f"answers meanwhile · {trainer} · {data_set}"
        )
    return (
        f"✓ Ready · base {base} · SFT {sft} · {runtime} · "
        f"preference-tuned arm serves **adapter v{engine.adapter_version}** · {trainer} · {data_set}"
        + durable_copy_note(pg.durable_status())
    )


def durable_copy_note(status: dict | None) -> str:
    """The durable copy's part of the status line: quiet while it keeps up, loud when it lags or fails."""
    if status is None:
        return ""
    problem = status.get("last_error") or status.get("hub_error")
    if problem or status["lagging_seconds"] > COPY_LAG_SECONDS:
        behind = f"{status['pending']} changes not copied yet" if status["pending"] else "copy retrying"
        return f" · ⚠ **durable copy lags**: {behind} (votes are safe in the local store meanwhile)" + (
            f": {code(problem)}" if problem else ""
        )
    return f" · durable copy {code(status['target'])}"


def loading_message(playground: Playground) -> str:
    specs = (playground.preset.base, playground.preset.sft)
    converts = any(
        (s.startswith("embedded:") or s.endswith(".gguf")) and cached_copy(s, playground.data_dir) is None
        for s in specs
    )
    if converts:
        return "Loading models… converting the embedded GGUF once, about a minute."
    return "Loading models…"
