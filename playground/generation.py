"""Three arms for one prompt, streamed token by token: base, SFT, and preference-tuned (SFT + the serving LoRA
adapter), over any serving runtime (runtimes/: torch, onnx, vllm).

The Engine keeps what every runtime shares: the arms and their rows, each model's input fitted to its context
budget, stop rules (decoding.RowStreamer), the serving adapter version and what each answer records. A runtime
only decodes token ids for rows of one prompt, each with its seed and adapter name.

The SFT and preference arms are rows of ONE request to the SFT model's runtime (one set of weights; the preference
row names the serving adapter `v<N>`), and share the request's seed: with the same sampling noise, whatever differs
between those two columns is the adapter's doing. The base model decodes at the same time in its own thread.

Hot swap: a new version is attached under its own name before it serves; a request takes the serving name (and so
the version it records) when it starts, and the previous version is detached once no request runs with it, so no
answer ever sees a half-loaded or vanished adapter.

A request may carry earlier turns of a conversation (`history`, see prompting.py). Each model renders the
conversation in its own framing and, when prompt + answer would not fit its context budget, drops the oldest whole
turns (`Answer.dropped_turns` says how many that answer's model did not see).

A runtime that fails (a server unreachable, a worker gone: runtimes.ServingError) fails only the answers it was
writing: they end with `finish_reason="error"` and the message in `error`, and the other arms answer on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from .arms import ARM_TITLES, ARMS
from .decoding import Mirror, RowStreamer
from .int8 import int8_roles
from .leases import AdapterLeases
from .models import LoadedModel, Preset, eos_ids
from .prompting import (
    BASE_STOP_STRINGS,
    base_prompt,
    chat_prompt,
    check_history,
    check_prompt,
    context_budget,
    encode_prompt,
    fit_conversation,
)
from .reward_scoring import RewardScorer
from .runtimes import AdapterError, DecodeRow, ModelRuntime, ServingError
from .runtimes.torch_runtime import TorchRuntime
from .scoring import Scorer
from .settings import Sampling

log = logging.getLogger(__name__)

V0_NOTE = "version 0: no DPO round has run yet, so this is the SFT model itself"

__all__ = ["ARMS", "ARM_TITLES", "AdapterError", "Answer", "Engine", "ServingError", "V0_NOTE"]


@dataclass
class Answer:
    """One arm's answer and everything that produced it. Mutated while streaming; `done` when final."""

    arm: str
    model: str
    adapter_version: int
    settings: dict
    seed: int
    text: str = ""
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    ttft: float | None = None  # seconds to the first token
    finish_reason: str | None = None  # "eos" | "stop" | "length" | "cancelled" | "error"
    done: bool = False
    note: str | None = None
    dropped_turns: int = 0  # earlier turns of the conversation this answer's model did not see (context budget)
    error: str | None = None  # why this answer could not be written (its runtime failed); the other arms go on
    # The serving reward model's score, given once the answer is written (judging.py); reward_version 0: there was
    # no reward model to score it yet; None: not scored.
    reward: float | None = None
    reward_version: int | None = None

    @property
    def tokens_per_second(self) -> float:
        decode_time = self.seconds - (self.ttft or 0)
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0

    def to_dict(self) -> dict:
        row = asdict(self)
        row["tokens_per_second"] = round(self.tokens_per_second, 2)
        return row


class Engine:
    """Owns the loaded models, their runtimes and the serving adapter; streams answers for any number of callers."""

    def __init__(
        self,
        base: LoadedModel | None,
        sft: LoadedModel,
        runtimes: dict[str, ModelRuntime] | None = None,
        load_sft_weights=None,
    ):
        """runtimes: {"base": ..., "sft": ...} (default: torch on the LoadedModels' weights; then the LoadedModels
        may come without torch weights, and `load_sft_weights()` gives the SFT model's to the scorer)."""
        self.base, self.sft = base, sft
        self.runtimes = runtimes or {role: TorchRuntime(m) for role, m in (("base", base), ("sft", sft)) if m}
        self.runtime = self.runtimes["sft"].name  # what serves the SFT and preference arms
        self.runtime_note: str | None = None  # why `auto` fell back to torch, for the status line
        serving = self.runtimes["sft"] if isinstance(self.runtimes["sft"], TorchRuntime) else None
        self.scoring = Scorer(sft, serving, load_sft_weights)
        self.rewards = RewardScorer(self.scoring)  # the serving reward model, on the scorer's SFT weights
        self.adapters = AdapterLeases(self.runtimes["sft"])
        self.base_stops = BASE_STOP_STRINGS  # benchmarks clear it to time full-length base answers
        self.preparing: dict[str, threading.Thread] = {}  # role -> the thread making the runtime that takes over
        self.closed = False
        self._swapping = threading.Lock()  # a runtime that takes over is either swapped in or closed, never leaked

    @classmethod
    def from_preset(
        cls,
        preset: Preset,
        data_dir,
        *,
        trust_remote_code=False,
        device="cpu",
        precision="auto",
        threads: int | None = None,
        adapter_targets: tuple[str, ...] | None = None,
        runtime: str = "torch",
        chat_workers: int = 1,
        vllm=None,
        serve_while_building: bool = False,
    ) -> Engine:
        """The models of `preset` on `runtime` (runtimes/opening.py says what each setting does); vllm: a
        runtimes.vllm.server.VllmOptions for `--runtime vllm`."""
        from .runtimes.opening import open_runtimes

        opened = open_runtimes(
            preset,
            data_dir,
            trust_remote_code=trust_remote_code,
            device=device,
            int8=int8_roles(precision, device),
            precision=precision,
            threads=threads,
            adapter_targets=adapter_targets,
            runtime=runtime,
            chat_workers=chat_workers,
            vllm=vllm,
            serve_while_building=serve_while_building,
        )
        engine = cls(opened.base, opened.sft, opened.runtimes, opened.load_sft_weights)
        for role, make in opened.later.items():
            engine.take_over_later(role, make)
        return engine

    @classmethod
    def for_scoring(cls, preset: Preset, data_dir, *, trust_remote_code=False, device="cpu") -> Engine:
        """The SFT model alone, in torch, for what only scores answers (`explain`, the command line): no base
        model, nothing decodes."""
        from .models import load_model

        return cls(None, load_model(preset.sft, data_dir, "sft", trust_remote_code=trust_remote_code, device=device))

    def take_over_later(self, role: str, make) -> None:
        """Build `make()` -> (LoadedModel, ModelRuntime) in the background and let it serve `role` once it is
        ready; requests running meanwhile finish on the stand-in. If it fails, the stand-in keeps serving."""

        def prepare():
            try:
                loaded, runtime = make()
            except Exception as error:
                log.warning("The %s model keeps serving with %s: %s", role, self.runtimes[role].name, error)
                self.runtime_note = f"the {role} model stays on {self.runtimes[role].name}: {error}"
                return
            with self._swapping:
                if self.closed:
                    runtime.close()
                    return
                stand_in = self.runtimes[role]
                self.runtimes[role] = runtime
                if role == "base":
                    self.base = loaded
            stand_in.close()
            log.info("The %s model now serves with the %s runtime.", role, runtime.name)

        thread = threading.Thread(target=prepare, name=f"prepare-{role}", daemon=True)
        self.preparing[role] = thread
        thread.start()

    def preparing_roles(self) -> list[str]:
        """The roles whose runtime is still being made (take_over_later)."""
        return [role for role, thread in self.preparing.items() if thread.is_alive()]

    def wait_prepared(self, timeout: float | None = None) -> bool:
        """Wait for the runtimes still being made (take_over_later); True when none is left."""
        for thread in list(self.preparing.values()):
            thread.join(timeout)
        return not self.preparing_roles()

    def close(self) -> None:
        """Stop what the runtimes started (decode workers, a vLLM server)."""
        with self._swapping:
            self.closed = True
        for runtime in self.runtimes.values():
            runtime.close()

    @property
    def problem(self) -> str | None:
        """The latest failure of a runtime that serves, until it answers again (for the status line)."""
        return next((r.problem for r in self.runtimes.values() if r.problem), None)

    def describe(self) -> dict:
        """Which runtime serves each model (the status line, `generate --json`)."""
        return {role: runtime.name for role, runtime in self.runtimes.items()}

    def precisions(self) -> dict:
        """The weights each model decodes with and, where a runtime chose among copies, why (`generate --json`)."""
        loaded = {"base": self.base, "sft": self.sft}
        return {
            role: {
                "precision": runtime.precision or getattr(loaded[role], "precision", None),
                "why": runtime.precision_why,
            }
            for role, runtime in self.runtimes.items()
        }

    # ---- adapters (hot swap, leases.py) -----------------------------------------------------------------
    def use_adapter(self, version: int, path: str | None) -> None:
        """Serve adapter `version` from `path` (0: no adapter). Requests already running keep the version they
        started with; atomic for callers. Raises AdapterError (nothing changes) when it cannot be loaded."""
        self.adapters.use(version, path)

    @property
    def adapter_version(self) -> int:
        return self.adapters.version

    @property
    def adapter_path(self) -> str | None:
        return self.adapters.path

    # ---- generation ----------------------------------------------------------------------------------------
    def stream(
        self, prompt: str, sampling: Sampling | None = None, arms=ARMS, history: list[dict] | None = None
    ) -> Iterator[dict[str, Answer]]:
        """Yield {arm: Answer} each time any arm's text grows, until every arm is done.

        history: earlier turns, [{"role": "user"|"assistant", "content": ...}, ...] alternating and ending with the
        assistant (prompting.check_history; malformed: PromptError at once); `prompt` is the new user message.
        The yielded dict and its Answers are updated in place: copy them to keep a snapshot.
        """
        sampling = (sampling or Sampling()).checked()
        history = check_history(history)
        return self._stream(prompt, sampling, [Row(arm, arm, sampling.seed) for arm in ARMS if arm in arms], history)

    def stream_duel(
        self, prompt: str, sampling: Sampling | None = None, history: list[dict] | None = None
    ) -> Iterator[dict[str, Answer]]:
        """Two samples ("a", "b") of the preference-tuned model with different seeds: on-policy pairs for DPO."""
        sampling = (sampling or Sampling()).checked()
        history = check_history(history)
        return self._stream(
            prompt, sampling, [Row("a", "pref", sampling.seed), Row("b", "pref", sampling.seed + 1)], history
        )

    def generate(
        self, prompt: str, sampling: Sampling | None = None, arms=ARMS, history: list[dict] | None = None
    ) -> dict[str, Answer]:
        return final(self.stream(prompt, sampling, arms, history))

    def duel(
        self, prompt: str, sampling: Sampling | None = None, history: list[dict] | None = None
    ) -> dict[str, Answer]:
        return final(self.stream_duel(prompt, sampling, history))

    def model_input(
        self, role: str, prompt: str, history: list[dict] | None = None, max_new_tokens: int = Sampling.max_new_tokens
    ) -> tuple[str, int]:
        """The text model `role` ("base" or "sft") gets for this conversation, and how many of the oldest earlier
        turns it leaves out so that prompt + `max_new_tokens` fit its context budget (prompting.context_budget,
        and the runtime's own limit where it is smaller). Raises PromptError when the new prompt alone does not
        fit."""
        loaded = self.base if role == "base" else self.sft
        render = base_prompt if role == "base" else (lambda p, h: chat_prompt(loaded.tokenizer, p, h))
        prompt, history = check_prompt(prompt), check_history(history)
        messages = [*history, {"role": "user", "content": prompt}]
        budget = context_budget(loaded.config, loaded.tokenizer)
        limit = self.runtimes[role].max_context
        kept, dropped = fit_conversation(
            messages,
            lambda m: len(encode_prompt(loaded.tokenizer, render(m[-1]["content"], m[:-1]))),
            min(budget, limit) if limit else budget,
            answer_tokens=max_new_tokens,
            model=f"the {'base' if role == 'base' else 'SFT'} model",
        )
        return render(prompt, kept[:-1]), dropped

    def _stream(
        self, prompt: str, sampling: Sampling, rows: list[Row], history: list[dict] | None = None
    ) -> Iterator[dict[str, Answer]]:
        prompt = check_prompt(prompt)
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()
        start = time.perf_counter()
        answers: dict[str, Answer] = {}
        jobs = []
        base_rows = [row for row in rows if row.arm == "base"]
        chat_rows = [row for row in rows if row.arm != "base"]
        # Each model's input, fitted to its own context budget, before anything runs (a prompt too long: PromptError).
        inputs = {
            role: self.model_input(role, prompt, history, sampling.max_new_tokens)
            for role, wanted in (("base", base_rows), ("sft", chat_rows))
            if wanted
        }
        lease = None
        if base_rows:
            text, dropped = inputs["base"]
            answers.update({row.key: self._new_answer(row, sampling, 0, dropped) for row in base_rows})
            jobs.append(("base", text, base_rows, None, self.base_stops))
        if chat_rows:
            text, dropped = inputs["sft"]
            version, lease = self.adapters.lease()  # the version these rows run with, and record
            for row in chat_rows:
                answers[row.key] = self._new_answer(row, sampling, version if row.arm == "pref" else 0, dropped)
            jobs.append(("sft", text, chat_rows, lease, ()))
        threads = [
            threading.Thread(target=self._run, args=(*job, sampling, events, cancel), daemon=True) for job in jobs
        ]
        for thread in threads:
            thread.start()
        pending = set(answers)
        try:
            while pending:
                event = events.get()
                if event[0] == "error":
                    raise event[2]
                kind, key, *payload = event
                answer = answers[key]
                now = time.perf_counter() - start
                if kind == "prompt_tokens":
                    answer.prompt_tokens = payload[0]
                    continue
                if kind == "text":
                    answer.text, answer.new_tokens = payload
                    if answer.ttft is None:
                        answer.ttft = now
                elif kind in ("done", "failed"):
                    if answer.done:
                        continue
                    if kind == "failed":
                        answer.finish_reason, answer.error = "error", payload[0]
                    else:
                        answer.finish_reason, answer.new_tokens = payload
                    answer.text = answer.text.strip()
                    answer.done = True
                    pending.discard(key)
                answer.seconds = now
                yield answers
        finally:
            cancel.set()  # a consumer that stops reading (closed browser tab) frees the models quickly
            for thread in threads:
                thread.join()
            self.adapters.release(lease)

    def _new_answer(self, row: Row, sampling: Sampling, version: int, dropped_turns: int = 0) -> Answer:
        model = self.base if row.arm == "base" else self.sft
        note = V0_NOTE if row.arm == "pref" and version == 0 else None
        settings = sampling.as_dict() | {"seed": row.seed}
        return Answer(row.arm, model.name, version, settings, row.seed, note=note, dropped_turns=dropped_turns)

    def _run(self, role, text, rows, adapter, stops, sampling, events, cancel):
        """Decode `rows` of one model's input `text` on its runtime (a thread per model). Rows that would write
        exactly the same tokens (same seed, same adapter: the preference arm at version 0) run once, mirrored."""
        loaded = self.base if role == "base" else self.sft
        unique: dict[tuple, Row] = {}
        mirrors: dict[str, list[str]] = {}
        for row in rows:
            spec = (row.seed, adapter if row.arm == "pref" else None)
            if spec in unique:
                mirrors.setdefault(unique[spec].key, []).append(row.key)
            else:
                unique[spec] = row
        sink = Mirror(events, mirrors) if mirrors else events
        try:
            ids = encode_prompt(loaded.tokenizer, text)
            for row in rows:
                events.put(("prompt_tokens", row.key, len(ids)))
            streamer = RowStreamer(
                sink,
                [row.key for row in unique.values()],
                loaded.tokenizer,
                stops,
                eos_ids(loaded.generation_config, loaded.tokenizer),
            )
            self.runtimes[role].decode(
                ids, [DecodeRow(seed, name) for seed, name in unique], sampling, streamer, cancel
            )
            streamer.end()
        except ServingError as error:  # this model's answers fail; the other model's go on
            log.error("The %s runtime failed: %s", role, error)
            for row in rows:
                events.put(("failed", row.key, str(error)))
        except BaseException as error:
            events.put(("error", rows[0].key, error))


@dataclass(frozen=True)
class Row:
    """One answer being generated: its key in the result, its arm, and the seed of its sampling noise."""

    key: str
    arm: str
    seed: int


def final(stream: Iterator[dict[str, Answer]], first: dict[str, Answer] | None = None) -> dict[str, Answer]:
    """The stream's last update: the finished answers (`first` when the stream has nothing more)."""
    rest = deque(stream, maxlen=1)
    return rest[0] if rest else (first or {})
