"""Three arms for one prompt, streamed token by token: base, SFT, and preference-tuned (SFT + DPO LoRA adapter).

One copy of the SFT weights serves two arms. The SFT and preference rows run as ONE batched `generate` call with
PEFT's mixed-adapter batches (`adapter_names=["__base__", "v3"]`): the SFT row never touches the adapter, and no
global adapter switch happens that another request could observe. The base model runs concurrently in its own
thread. Each model has a lock, held for a whole generation and for adapter swaps, because PEFT's per-call adapter
routing and adapter loading both mutate the model's modules.

Sampling uses one seeded `torch.Generator` per row (`SeededSampler`), so an answer depends only on its seed, not
on which other rows shared its batch or which thread drew random numbers first. The SFT and preference arms share
the request's seed: with the same sampling noise, whatever differs between those two columns is the adapter's doing.

Two runtimes decode (`--runtime`, runtime.py): `torch` as above, and `onnx`, where ONNX Runtime GenAI decodes each
model in its own worker process (about 3x faster per token on a CPU, the same greedy tokens). There the SFT and
preference rows are two generators over one set of weights (the preference one with the version's adapter) and
the base model decodes in parallel in its own process; token steps come back to `_drive`, so streaming, stop rules,
cancelling and the recorded adapter version are the same code for both.

A request may carry earlier turns of a conversation (`history`, see prompting.py). Each model renders the
conversation in its own framing and, when prompt + answer would not fit its context budget, drops the oldest whole
turns (`Answer.dropped_turns` says how many that answer's model did not see).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from .decoding import AnswerBoundary, Mirror, RowStreamer, SeededSampler
from .int8 import int8_roles
from .models import LoadedModel, Preset, load_model, models_dir
from .prompting import (BASE_STOP_STRINGS, base_prompt, chat_prompt, check_history, check_prompt, context_budget,
                        fit_conversation)
from .settings import RoundSettings, Sampling, half_the_cores

log = logging.getLogger(__name__)

ARMS = ("base", "sft", "pref")
ARM_TITLES = {"base": "Base", "sft": "SFT", "pref": "Preference-tuned"}
V0_NOTE = "version 0: no DPO round has run yet, so this is the SFT model itself"


class AdapterError(RuntimeError):
    """An adapter folder could not be loaded; the previous adapter keeps serving."""


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
    finish_reason: str | None = None  # "eos" | "stop" | "length" | "cancelled"
    done: bool = False
    note: str | None = None
    dropped_turns: int = 0  # earlier turns of the conversation this answer's model did not see (context budget)

    @property
    def tokens_per_second(self) -> float:
        decode_time = self.seconds - (self.ttft or 0)
        return (self.new_tokens - 1) / decode_time if self.new_tokens > 1 and decode_time > 0 else 0.0

    def to_dict(self) -> dict:
        row = asdict(self)
        row["tokens_per_second"] = round(self.tokens_per_second, 2)
        return row


class Engine:
    """Owns the loaded models and the serving adapter; streams answers for any number of callers."""

    def __init__(self, base: LoadedModel, sft: LoadedModel, workers: dict | None = None, sft_weights=None):
        """workers: {"base": DecodeWorker, "sft": DecodeWorker[, "sft2": a second one over the SFT model]} to decode
        with the onnx runtime (runtime.py); then
        the LoadedModels may come without torch weights, and `sft_weights()` loads the SFT model's when something
        needs them (sft_nll)."""
        self.base, self.sft = base, sft
        self.workers = workers
        self.runtime = "onnx" if workers else "torch"
        self.runtime_note: str | None = None  # why `auto` fell back to torch, for the status line
        self._sft_weights = sft_weights
        self._locks = {"base": threading.Lock(), "sft": threading.Lock()}
        self._peft = None  # the PeftModel around sft.model, created when the first adapter arrives
        self._adapter_name: str | None = None
        self.adapter_version = 0
        self.adapter_path: str | None = None
        self.base_stops = BASE_STOP_STRINGS  # benchmarks clear it to time full-length base answers

    @classmethod
    def from_preset(cls, preset: Preset, data_dir, *, trust_remote_code=False, device="cpu", precision="auto",
                    threads: int | None = None, adapter_targets: tuple[str, ...] | None = None,
                    runtime: str = "torch", chat_workers: int = 2) -> "Engine":
        """precision: `auto` (on a CPU the base model int8, the SFT model float), `int8` (both) or `float` (neither;
        see int8.int8_roles).
        adapter_targets: the layers LoRA adapters attach to (default: the trainer's); they stay float in an int8
        SFT model.
        threads: torch threads on a CPU (process-wide: torch has no per-model setting); by default half the cores,
        because the base model and the SFT batch decode at the same time, each bound by per-token overhead rather
        than arithmetic (docs/performance.md, "Thread allocation")."""
        if device == "cpu":
            torch.set_num_threads(threads or half_the_cores())
        int8 = int8_roles(precision, device)
        targets = tuple(adapter_targets or RoundSettings().target_modules)
        if runtime == "onnx":
            return cls._onnx(preset, data_dir, trust_remote_code, int8, threads or half_the_cores(), targets,
                             chat_workers)
        base = load_model(preset.base, data_dir, "base", trust_remote_code=trust_remote_code, device=device,
                          int8="base" in int8)
        sft = load_model(preset.sft, data_dir, "sft", trust_remote_code=trust_remote_code, device=device,
                         int8="sft" in int8,
                         keep_float=targets)
        return cls(base, sft)

    @classmethod
    def for_scoring(cls, preset: Preset, data_dir, *, trust_remote_code=False, device="cpu") -> "Engine":
        """The SFT model alone, in torch, for what only scores answers (`explain`, the command line): no base
        model, nothing decodes."""
        return cls(None, load_model(preset.sft, data_dir, "sft", trust_remote_code=trust_remote_code, device=device))

    @classmethod
    def _onnx(cls, preset: Preset, data_dir, trust_remote_code, int8: set[str], threads: int,
              targets: tuple[str, ...], chat_workers: int = 2) -> "Engine":
        """Both models decoded by the onnx runtime in worker processes; torch holds only tokenizers and configs
        (the SFT weights load on demand)."""
        from . import runtime as onnx_runtime

        base = load_model(preset.base, data_dir, "base", trust_remote_code=trust_remote_code, weights=False)
        sft = load_model(preset.sft, data_dir, "sft", trust_remote_code=trust_remote_code, weights=False)
        if "sft" in int8:
            # The builder's int8 would quantize the LoRA slots too, and int8 SFT weights followed the float model
            # on only 95% of next tokens (docs/performance.md): the SFT model stays float on this runtime.
            log.warning("--precision int8: the onnx runtime keeps the SFT model in float (its LoRA slots need it).")
        workers = {}
        try:
            for role, loaded, slots in (("base", base, ()), ("sft", sft, targets)):
                precision = "int8" if role == "base" and role in int8 else "fp32"
                folder = onnx_runtime.prepare_model(loaded.source, models_dir(data_dir), precision, slots)
                loaded.precision = "int8" if precision == "int8" else "float32"
                workers[role] = onnx_runtime.DecodeWorker(folder, threads, role)
            # A second process over the SFT model: the SFT and preference rows decode in parallel, as a batch
            # would (ONNX Runtime GenAI runs one adapter per generator, so one process would take turns).
            if chat_workers > 1:
                workers["sft2"] = onnx_runtime.DecodeWorker(workers["sft"].model_dir, threads, "sft2")
        except BaseException:
            for worker in workers.values():
                worker.close()
            raise

        def sft_weights():
            return load_model(preset.sft, data_dir, "sft", trust_remote_code=trust_remote_code).model

        return cls(base, sft, workers, sft_weights)

    def close(self) -> None:
        """Stop the decode workers (the onnx runtime); the torch runtime holds nothing to stop."""
        for worker in (self.workers or {}).values():
            worker.close()

    # ---- adapters (hot swap) -------------------------------------------------------------------------------
    def use_adapter(self, version: int, path: str | None) -> None:
        """Serve adapter `version` from `path` (0/None: no adapter). Waits for running generations; atomic for callers."""
        from peft import PeftModel

        name = f"v{version}"
        with self._locks["sft"]:
            if version == self.adapter_version and (version == 0 or name == self._adapter_name):
                return
            if self.workers:
                self._use_onnx_adapter(version, path, name)
                return
            if version and path:
                try:
                    if self._peft is None:
                        self._peft = PeftModel.from_pretrained(self.sft.model, path, adapter_name=name)
                    else:
                        self._peft.load_adapter(path, adapter_name=name)
                except Exception as error:
                    if self._peft is not None and name in self._peft.peft_config and name != self._adapter_name:
                        self._peft.delete_adapter(name)
                    hint = self._int8_hint(path)
                    raise AdapterError(f"Adapter v{version} at {path} could not be loaded: {error}.{hint}") from error
                # Rows pick their adapter per call (adapter_names), but PEFT still needs a valid active one.
                self._peft.set_adapter(name)
                self._peft.eval()
            old, self._adapter_name = self._adapter_name, (name if version else None)
            if old and old != self._adapter_name:
                self._peft.delete_adapter(old)  # frees its weights
            self.adapter_version, self.adapter_path = (version, path) if version else (0, None)

    def _use_onnx_adapter(self, version: int, path: str | None, name: str) -> None:
        """use_adapter for the onnx runtime: the version's converted adapter (converted now if the trainer did not,
        e.g. a version from before this runtime) goes into the SFT workers; the previous one is unloaded."""
        from . import runtime as onnx_runtime

        chat_workers = [self.workers[name] for name in ("sft", "sft2") if name in self.workers]
        if version and path:
            try:
                converted = onnx_runtime.converted_adapter(path, chat_workers[0].slots)
                for worker in chat_workers:  # either may run a preference row (a duel runs two)
                    worker.load_adapter(name, converted)
            except Exception as error:  # unreadable files, a format the runtime cannot take, the worker refusing it
                for worker in chat_workers:
                    if name in worker.adapters and name != self._adapter_name:
                        worker.unload_adapter(name)
                raise AdapterError(f"Adapter v{version} at {path} could not be loaded: {error}. To serve it, start "
                                   f"with --runtime torch.") from error
        old, self._adapter_name = self._adapter_name, (name if version else None)
        if old and old != self._adapter_name:
            for worker in chat_workers:
                worker.unload_adapter(old)
        self.adapter_version, self.adapter_path = (version, path) if version else (0, None)

    def _int8_hint(self, path: str) -> str:
        """Why an adapter cannot attach to an int8 SFT model, when that is the reason."""
        if self.sft.precision != "int8":
            return ""
        try:
            targets = json.loads((Path(path) / "adapter_config.json").read_text())["target_modules"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        on_int8 = sorted(set([targets] if isinstance(targets, str) else targets) - set(self.sft.float_layers))
        if not on_int8:
            return ""
        return (f" It targets {', '.join(on_int8)}, which this server holds in int8 (adapters can attach only to "
                f"{', '.join(sorted(self.sft.float_layers))}); to serve it, start with --precision float.")

    def sft_nll(self, prompt: str, answer: str) -> float | None:
        """Mean negative log-likelihood per answer token under the SFT model, adapter off: how natural a text
        looks to the model the adapter started from (a fluency yardstick; lower is more fluent)."""
        if not answer.strip():
            return None
        tokenizer = self.sft.tokenizer
        context = chat_prompt(tokenizer, prompt)
        ids = tokenizer(context + answer.strip(), return_tensors="pt", add_special_tokens=False).input_ids
        start = len(tokenizer(context, add_special_tokens=False).input_ids)
        with self._locks["sft"], torch.inference_mode():
            logits = self._reference_logits(ids)
        targets = ids[0, 1:].to(logits.device)
        return float(torch.nn.functional.cross_entropy(logits[0, start - 1 : -1].float(), targets[start - 1 :]))

    def answer_logprobs(self, prompt_ids: list[int], answer_ids: list[int], version: int,
                        path: str | None) -> tuple[list[float], list[float]]:
        """log π(token | everything before it) of each answer token, with adapter `version` (from `path`; 0: none)
        and without it (the SFT model): the two terms of DPO's implicit reward (explain.py). Always torch, on the
        SFT weights the server holds (loaded on first use when the onnx runtime serves); a version other than the
        serving one is loaded for the call and dropped after it."""
        ids = torch.tensor([list(prompt_ids) + list(answer_ids)])
        start = len(prompt_ids)
        with self._locks["sft"], torch.inference_mode():
            reference = token_logprobs(self._reference_logits(ids), ids, start)
            if not version:
                return reference, reference
            name, loaded_now = self._scoring_adapter(version, path)
            try:
                logits = self._peft(input_ids=ids.to(self.sft.model.device), adapter_names=[name]).logits
            finally:
                if loaded_now:
                    self._peft.delete_adapter(name)
            return token_logprobs(logits, ids, start), reference

    def _torch_sft(self):
        if self.sft.model is None:  # served by the onnx runtime: the torch weights load on first use
            self.sft.model = self._sft_weights()
        return self.sft.model

    def _reference_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The SFT model's logits, adapter off (PEFT injects its layers into the model itself, so with any adapter
        loaded the plain model is not plain: the wrapper must disable them). Call with the SFT lock held."""
        model = self._torch_sft()
        if self._peft is not None and self._peft.peft_config:
            with self._peft.disable_adapter():
                return self._peft(input_ids=ids.to(model.device)).logits
        return model(input_ids=ids.to(model.device)).logits

    def _scoring_adapter(self, version: int, path: str | None) -> tuple[str, bool]:
        """(adapter name, loaded for this call): the serving adapter when the torch runtime holds `version`, else
        the version's folder loaded under a name of its own. Call with the SFT lock held."""
        from peft import PeftModel

        if not self.workers and (version, path) == (self.adapter_version, self.adapter_path) and self._adapter_name:
            return self._adapter_name, False
        if not path:
            raise AdapterError(f"Adapter v{version} has no folder to load.")
        name = f"scoring-v{version}"
        try:
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self._torch_sft(), path, adapter_name=name)
            else:
                self._peft.load_adapter(path, adapter_name=name)
        except Exception as error:
            raise AdapterError(f"Adapter v{version} at {path} could not be loaded: {error}.") from error
        if self._adapter_name not in self._peft.peft_config:
            # No serving adapter in this wrapper (version 0, or the onnx runtime serves): PEFT still wants a valid
            # active adapter, and the one it had may be a scoring adapter deleted since.
            self._peft.set_adapter(name)
        self._peft.eval()
        return name, True

    # ---- generation ----------------------------------------------------------------------------------------
    def stream(self, prompt: str, sampling: Sampling | None = None, arms=ARMS,
               history: list[dict] | None = None) -> Iterator[dict[str, Answer]]:
        """Yield {arm: Answer} each time any arm's text grows, until every arm is done.

        history: earlier turns, [{"role": "user"|"assistant", "content": ...}, ...] alternating and ending with the
        assistant (prompting.check_history; malformed: PromptError at once); `prompt` is the new user message.
        The yielded dict and its Answers are updated in place: copy them to keep a snapshot.
        """
        sampling = (sampling or Sampling()).checked()
        history = check_history(history)
        return self._stream(prompt, sampling, [Row(arm, arm, sampling.seed) for arm in ARMS if arm in arms], history)

    def stream_duel(self, prompt: str, sampling: Sampling | None = None,
                    history: list[dict] | None = None) -> Iterator[dict[str, Answer]]:
        """Two samples ("a", "b") of the preference-tuned model with different seeds: on-policy pairs for DPO."""
        sampling = (sampling or Sampling()).checked()
        history = check_history(history)
        return self._stream(prompt, sampling, [Row("a", "pref", sampling.seed), Row("b", "pref", sampling.seed + 1)],
                            history)

    def generate(self, prompt: str, sampling: Sampling | None = None, arms=ARMS,
                 history: list[dict] | None = None) -> dict[str, Answer]:
        return _last(self.stream(prompt, sampling, arms, history))

    def duel(self, prompt: str, sampling: Sampling | None = None,
             history: list[dict] | None = None) -> dict[str, Answer]:
        return _last(self.stream_duel(prompt, sampling, history))

    def model_input(self, role: str, prompt: str, history: list[dict] | None = None,
                    max_new_tokens: int = Sampling.max_new_tokens) -> tuple[str, int]:
        """The text model `role` ("base" or "sft") gets for this conversation, and how many of the oldest earlier
        turns it leaves out so that prompt + `max_new_tokens` fit its context budget (prompting.context_budget).
        Raises PromptError when the new prompt alone does not fit."""
        loaded = self.base if role == "base" else self.sft
        render = base_prompt if role == "base" else (lambda p, h: chat_prompt(loaded.tokenizer, p, h))
        prompt, history = check_prompt(prompt), check_history(history)
        messages = [*history, {"role": "user", "content": prompt}]
        kept, dropped = fit_conversation(
            messages,
            lambda m: _token_count(loaded.tokenizer, render(m[-1]["content"], m[:-1])),
            context_budget(loaded.config, loaded.tokenizer),
            answer_tokens=max_new_tokens,
            model=f"the {'base' if role == 'base' else 'SFT'} model",
        )
        return render(prompt, kept[:-1]), dropped

    def _stream(self, prompt: str, sampling: Sampling, rows: list["Row"],
                history: list[dict] | None = None) -> Iterator[dict[str, Answer]]:
        prompt = check_prompt(prompt)
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()
        start = time.perf_counter()
        answers: dict[str, Answer] = {}
        workers = []
        base_rows = [row for row in rows if row.arm == "base"]
        chat_rows = [row for row in rows if row.arm != "base"]
        # Each model's input, fitted to its own context budget, before anything runs (a prompt too long: PromptError).
        inputs = {role: self.model_input(role, prompt, history, sampling.max_new_tokens)
                  for role, wanted in (("base", base_rows), ("sft", chat_rows)) if wanted}
        if base_rows:
            text, dropped = inputs["base"]
            answers.update({row.key: self._new_answer(row, sampling, 0, dropped) for row in base_rows})
            workers.append(threading.Thread(target=self._run_base, args=(text, sampling, base_rows, events, cancel)))
        if chat_rows:
            text, dropped = inputs["sft"]
            with self._locks["sft"]:  # the adapter version we record is the one the rows will run with
                version = self.adapter_version
            for row in chat_rows:
                answers[row.key] = self._new_answer(row, sampling, version if row.arm == "pref" else 0, dropped)
            workers.append(
                threading.Thread(target=self._run_chat, args=(text, sampling, chat_rows, version, events, cancel))
            )
        for worker in workers:
            worker.daemon = True
            worker.start()
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
                if kind == "version":  # a swap landed between our read and the lock: record the truth
                    answer.adapter_version = payload[0]
                    answer.note = None if payload[0] else V0_NOTE
                    continue
                if kind == "text":
                    answer.text, answer.new_tokens = payload
                    if answer.ttft is None:
                        answer.ttft = now
                elif kind == "done":
                    answer.finish_reason, answer.new_tokens = payload
                    answer.text = answer.text.strip()
                    answer.done = True
                    pending.discard(key)
                answer.seconds = now
                yield answers
        finally:
            cancel.set()  # a consumer that stops reading (closed browser tab) frees the models quickly
            for worker in workers:
                worker.join()

    def _new_answer(self, row: "Row", sampling: Sampling, version: int, dropped_turns: int = 0) -> Answer:
        model = self.base if row.arm == "base" else self.sft
        note = V0_NOTE if row.arm == "pref" and version == 0 else None
        settings = sampling.as_dict() | {"seed": row.seed}
        return Answer(row.arm, model.name, version, settings, row.seed, note=note, dropped_turns=dropped_turns)

    def _run_base(self, text, sampling, rows, events, cancel):
        """text: the base model's input (model_input)."""
        try:
            with self._locks["base"]:
                self._generate(self.base, text, rows, sampling, events, cancel, self.base_stops, {})
        except BaseException as error:
            events.put(("error", rows[0].key, error))

    def _run_chat(self, text, sampling, rows, version_seen, events, cancel):
        """text: the SFT model's input (model_input), for every row."""
        try:
            with self._locks["sft"]:
                if self.adapter_version != version_seen:
                    for row in rows:
                        if row.arm == "pref":
                            events.put(("version", row.key, self.adapter_version))
                adapter = self._adapter_name
                if adapter is None:
                    # No adapter: every row runs the SFT weights, and rows with the same seed would repeat each
                    # other token for token (the preference arm at version 0), so each seed runs once.
                    unique: dict[int, Row] = {}
                    mirrors: dict[str, list[str]] = {}
                    for row in rows:
                        if row.seed in unique:
                            mirrors.setdefault(unique[row.seed].key, []).append(row.key)
                        else:
                            unique[row.seed] = row
                    self._generate(self.sft, text, list(unique.values()), sampling, events, cancel, (), {}, mirrors=mirrors)
                else:
                    names = ["__base__" if row.arm == "sft" else adapter for row in rows]
                    self._generate(
                        self.sft, text, rows, sampling, events, cancel, (), {"adapter_names": names}, model=self._peft
                    )
        except BaseException as error:
            events.put(("error", rows[0].key, error))

    def _generate(self, loaded, text, rows, sampling, events, cancel, stops, extra_kwargs, model=None, mirrors=None):
        tokenizer = loaded.tokenizer
        keys = [row.key for row in rows]
        sink = Mirror(events, mirrors) if mirrors else events
        eos = loaded.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        eos_ids.discard(None)
        if self.workers:
            adapter = extra_kwargs.get("adapter_names", [None] * len(rows))
            ids = tokenizer(text, **_encoding(tokenizer))["input_ids"]
            for key in keys:
                sink.put(("prompt_tokens", key, len(ids)))
            specs = [(row.seed, None if name in (None, "__base__") else name) for row, name in zip(rows, adapter)]
            if loaded is self.base:
                groups = [(self.workers["base"], list(range(len(rows))))]
            else:  # rows alternate between the SFT processes
                chat = [self.workers[name] for name in ("sft", "sft2") if name in self.workers]
                groups = [(w, list(range(i, len(rows), len(chat)))) for i, w in enumerate(chat)]
            _decode_in_workers([g for g in groups if g[1]], ids, specs, keys, sampling, sink, tokenizer, stops,
                               eos_ids, cancel)
            return
        streamer = RowStreamer(sink, keys, tokenizer, stops, eos_ids)
        inputs = tokenizer([text] * len(rows), return_tensors="pt", **_encoding(tokenizer))
        inputs = inputs.to(loaded.model.device)
        prompt_len = inputs["input_ids"].shape[1]
        for key in keys:
            sink.put(("prompt_tokens", key, prompt_len))
        processors = LogitsProcessorList()
        if not sampling.greedy:
            processors.append(SeededSampler([row.seed for row in rows], sampling.temperature, sampling.top_p))
        with torch.inference_mode():
            (model or loaded.model).generate(
                **inputs,
                **extra_kwargs,
                do_sample=False,  # sampling happens in SeededSampler
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([AnswerBoundary(tokenizer, prompt_len, stops, cancel)]),
                streamer=streamer,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(eos_ids),
            )


def _decode_in_workers(groups, ids, specs, keys, sampling, sink, tokenizer, stops, eos_ids, cancel) -> None:
    """Each (worker, row indexes) group decodes in its own thread (they wait on pipes, not on the GIL); the first
    failure is raised once all have ended."""
    errors = []

    def run(worker, indexes):
        try:
            streamer = RowStreamer(sink, [keys[i] for i in indexes], tokenizer, stops, eos_ids)
            steps = worker.generate(ids, [specs[i] for i in indexes], sampling, sampling.max_new_tokens)
            _drive(steps, streamer, cancel)
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


def _drive(steps, streamer: RowStreamer, cancel: threading.Event) -> None:
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
    streamer.end()


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, start: int) -> list[float]:
    """log-probabilities of ids[0, start:] under the logits of one sequence (row 0), each given what precedes it."""
    logprobs = torch.log_softmax(logits[0, start - 1 : -1].float(), dim=-1)
    return logprobs.gather(1, ids[0, start:].to(logprobs.device)[:, None])[:, 0].tolist()


def _encoding(tokenizer) -> dict:
    """How a prompt text is tokenized: a chat template writes its own special tokens; a plain framing gets the
    tokenizer's usual ones (a BOS token, for models that use one)."""
    return {"add_special_tokens": not tokenizer.chat_template}


def _token_count(tokenizer, text: str) -> int:
    """The prompt tokens `_generate` will feed for `text`."""
    return len(tokenizer(text, **_encoding(tokenizer))["input_ids"])


@dataclass(frozen=True)
class Row:
    """One answer being generated: its key in the result, its arm, and the seed of its sampling noise."""

    key: str
    arm: str
    seed: int


def _last(stream: Iterator[dict[str, Answer]]) -> dict[str, Answer]:
    answers: dict[str, Answer] = {}
    for answers in stream:
        pass
    return answers
