"""The `onnx` serving runtime: ONNX Runtime GenAI decodes, each model in its own worker process.

Why (docs/performance.md, "Serving runtime"): on a CPU, `transformers.generate` is bound by per-token framework
overhead, and ONNX Runtime GenAI runs the same fp32 weights with the same next tokens faster. Its Python calls
hold the GIL for a whole token step, so two models in one process take turns instead of running at once; one
process per model lets the base model and the SFT model decode in parallel and keeps the web server responsive.

`DecodeWorker` is the parent's end of one worker process (worker.py); `OnnxRuntime` serves one model over
one or two of them (two over the SFT model: its SFT and preference rows decode in parallel, as a batch would,
because ONNX Runtime GenAI runs one adapter per generator). The ONNX copies come from build.py, the adapters from adapters.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from ...processes import child_env
from .. import DecodeRow, ModelRuntime, ServingError
from .adapters import converted_adapter
from .build import ROW_SCALE, lora_slots
from .worker import Duplex

log = logging.getLogger(__name__)


class WorkerError(ServingError):
    """The worker process failed a request or died; the message carries its reason."""


class DecodeWorker:
    """One ONNX model in a child process. One request at a time (callers hold the model's lock)."""

    def __init__(self, model_dir: Path, threads: int, label: str):
        self.model_dir, self.threads, self.label = Path(model_dir), threads, label
        self.slots = lora_slots(self.model_dir)
        self._lock = threading.Lock()
        self.adapters: dict[str, str] = {}  # loaded in the worker: reloaded if it has to be restarted
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        # A plain subprocess with two pipes (not multiprocessing's spawn, which re-runs the parent's main script):
        # it imports only onnxruntime-genai and exits when the parent's end of the pipe closes.
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        command = [
            sys.executable,
            "-m",
            "playground.runtimes.onnx.worker",
            "serve",
            str(self.model_dir),
            "--threads",
            str(self.threads),
            "--fds",
            f"{from_parent},{to_parent}",
        ]
        if self.slots:
            command += ["--row-scale", ROW_SCALE]
        self.process = subprocess.Popen(
            command, pass_fds=(from_parent, to_parent), env=child_env(), stdout=subprocess.DEVNULL
        )
        os.close(from_parent)
        os.close(to_parent)
        self._conn = Duplex(to_child, from_child)
        self._reply()  # waits for the model to load; raises WorkerError if it cannot

    def _died(self) -> WorkerError:
        code = self.process.wait()
        return WorkerError(
            f"the {self.label} decode worker exited (code {code}); it starts again with the next request"
        )

    def _reply(self):
        try:
            reply = self._conn.recv()
        except (EOFError, OSError) as error:
            raise self._died() from error
        if reply[0] == "error":
            raise WorkerError(reply[1])
        return reply[1]

    def call(self, *message):
        with self._lock:
            self._alive()
            self._send(message)
            return self._reply()

    def _send(self, message) -> None:
        try:
            self._conn.send(message)
        except OSError as error:
            raise self._died() from error

    def _alive(self) -> None:
        """A worker that died (killed, out of memory) is started again with its adapters before the next request;
        the request that was running when it died failed with WorkerError."""
        if self.process.poll() is None:
            return
        log.warning("The %s decode worker exited (code %s); starting it again.", self.label, self.process.poll())
        self._conn.close()
        self.restarts += 1
        self._start()
        for name, path in self.adapters.items():
            self._send(("load_adapter", name, path))
            self._reply()

    def load_adapter(self, name: str, path: Path) -> None:
        self.call("load_adapter", name, str(path))
        self.adapters[name] = str(path)

    def unload_adapter(self, name: str) -> None:
        self.call("unload_adapter", name)
        self.adapters.pop(name, None)

    def generate(self, prompt_ids: list[int], rows: list[tuple[int, str | None]], sampling, max_new_tokens: int):
        """Yield, per token step, one token id per row (None for a row that has stopped); send back which rows
        stop (a list of indexes) or True to cancel, with `.send()`. rows: (seed, adapter name or None)."""
        with self._lock:
            self._alive()
            self._send(
                (
                    "generate",
                    list(prompt_ids),
                    rows,
                    sampling.temperature,
                    sampling.top_p,
                    sampling.greedy,
                    max_new_tokens,
                )
            )
            try:
                while True:
                    step = self._reply()
                    if step is None:  # every row is done
                        return
                    stop = yield step
                    self._send(("next", stop if stop is not None else []))
            except GeneratorExit:
                # The caller went away mid-answer: end the request so the worker is free for the next one.
                try:
                    self._conn.send(("next", True))
                    while self._reply() is not None:
                        self._conn.send(("next", True))
                except (OSError, WorkerError):
                    pass  # it died meanwhile; the next request starts it again
                raise

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                with self._lock:
                    self._conn.send(("close",))
            except OSError:
                pass
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._conn.close()


class OnnxRuntime(ModelRuntime):
    """One model served by one or more decode workers; rows alternate between them. One request at a time."""

    name = "onnx"

    def __init__(self, workers: list[DecodeWorker]):
        self.workers = workers
        self.lock = threading.Lock()

    @classmethod
    def open(
        cls,
        source: str,
        models_dir: Path,
        precision: str,
        slots: tuple[str, ...],
        threads: int,
        processes: int,
        label: str,
    ) -> OnnxRuntime:
        """The model's ONNX copy (built on first use) in `processes` worker processes."""
        from .build import prepare_model

        folder = prepare_model(source, models_dir, precision, slots)
        workers = []
        try:
            for i in range(processes):
                workers.append(DecodeWorker(folder, threads, label if i == 0 else f"{label}{i + 1}"))
        except BaseException:
            for worker in workers:
                worker.close()
            raise
        return cls(workers)

    @property
    def slots(self) -> dict | None:
        return self.workers[0].slots

    def decode(self, ids, rows: list[DecodeRow], sampling, streamer, cancel) -> None:
        specs = [(row.seed, row.adapter) for row in rows]
        groups = [(w, list(range(i, len(rows), len(self.workers)))) for i, w in enumerate(self.workers)]
        with self.lock:
            _decode_in_workers([g for g in groups if g[1]], ids, specs, sampling, streamer, cancel)

    def attach(self, name: str, path: str) -> None:
        """The version's converted adapter (converted now if the trainer did not, e.g. a version from before this
        runtime) goes into every worker (any may run a preference row: a duel runs two)."""
        with self.lock:
            try:
                converted = converted_adapter(path, self.slots)
                for worker in self.workers:
                    worker.load_adapter(name, converted)
            except BaseException:
                for worker in self.workers:
                    if name in worker.adapters:
                        worker.unload_adapter(name)
                raise

    def detach(self, name: str) -> None:
        with self.lock:
            for worker in self.workers:
                worker.unload_adapter(name)

    def adapter_hint(self, path: str) -> str:
        return " To serve it, start with --runtime torch."

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def _decode_in_workers(groups, ids, specs, sampling, streamer, cancel) -> None:
    """Each (worker, row indexes) group decodes in its own thread (they wait on pipes, not on the GIL); the first
    failure is raised once all have ended."""
    errors = []

    def run(worker, indexes):
        try:
            steps = worker.generate(ids, [specs[i] for i in indexes], sampling, sampling.max_new_tokens)
            _drive(steps, streamer.rows(indexes), cancel)
        except BaseException as error:
            errors.append(error)
            cancel.set()  # the other rows stop too: the request failed

    threads = [threading.Thread(target=run, args=group, daemon=True) for group in groups[1:]]
    for thread in threads:
        thread.start()
    run(*groups[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _drive(steps, streamer, cancel: threading.Event) -> None:
    """Feed a decode worker's token steps to the streamer, telling the worker which rows stop (EOS, a stop
    string) and when everything stops (cancelled)."""
    try:
        step = next(steps)
        while True:
            streamer.step(step)
            stopped = [i for i, done in enumerate(streamer.finished) if done]
            step = steps.send(True if cancel.is_set() else stopped)
    except StopIteration:
        pass
    finally:
        steps.close()
