"""The `torch` serving runtime: transformers `generate` in this process, on a CPU or a GPU.

One copy of the SFT weights serves two arms: the SFT and preference rows run as ONE batched `generate` call with
PEFT's mixed-adapter batches (`adapter_names=["__base__", "v3"]`), so the SFT row never touches the adapter and no
global adapter switch happens that another request could observe. A lock is held for a whole generation and for
adapter loading, because PEFT's per-call routing and its loading both mutate the model's modules.

Sampling uses one seeded `torch.Generator` per row (decoding.SeededSampler), so an answer depends only on its seed,
not on which other rows shared its batch or which thread drew random numbers first. A model's own generation
settings (a repetition penalty, ...) do not apply (neutral.py says why).

The scorer (scoring.py) reads logits through the same object: with this runtime it scores on the weights that
serve, with the others on a torch copy of its own.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch
from transformers import LogitsProcessorList, StoppingCriteriaList

from ..decoding import AnswerBoundary, SeededSampler
from . import DecodeRow, ModelRuntime, neutral


class TorchRuntime(ModelRuntime):
    name = "torch"

    def __init__(self, loaded):
        """loaded: a models.LoadedModel with its weights."""
        self.loaded = loaded
        self.lock = threading.RLock()  # the scorer holds it across loading, scoring and dropping an adapter
        self.peft = None  # the PeftModel around loaded.model, created when the first adapter arrives

    @property
    def adapters(self) -> list[str]:
        return list(self.peft.peft_config) if self.peft is not None else []

    def decode(self, ids: list[int], rows: list[DecodeRow], sampling, streamer, cancel) -> None:
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        inputs = torch.tensor([list(ids)] * len(rows), device=model.device)
        processors = LogitsProcessorList()
        if not sampling.greedy:
            processors.append(SeededSampler([row.seed for row in rows], sampling.temperature, sampling.top_p))
        with self.lock, torch.inference_mode():
            extra = {}
            if self.adapters:  # LoRA layers are in the model: each row names its adapter, or none (__base__)
                model = self.peft
                extra["adapter_names"] = [row.adapter or "__base__" for row in rows]
            model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                **extra,
                **neutral.TRANSFORMERS,  # greedy: sampling happens in SeededSampler
                max_new_tokens=sampling.max_new_tokens,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([AnswerBoundary(tokenizer, len(ids), streamer.stops, cancel)]),
                streamer=streamer,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(streamer.eos_ids),
            )

    def attach(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self.lock:
            try:
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(self.loaded.model, path, adapter_name=name)
                else:
                    self.peft.load_adapter(path, adapter_name=name)
            except BaseException:
                if self.peft is not None and name in self.peft.peft_config and len(self.peft.peft_config) > 1:
                    self.peft.delete_adapter(name)  # half-loaded: gone again
                raise
            # Rows pick their adapter per call (adapter_names), but PEFT still needs a valid active one.
            self.peft.set_adapter(name)
            self.peft.eval()

    def detach(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                return
            others = [n for n in self.adapters if n != name]
            if others and self.peft.active_adapter == name:
                self.peft.set_adapter(others[0])
            self.peft.delete_adapter(name)  # frees its weights

    def logits(self, ids: torch.Tensor, adapter: str | None = None) -> torch.Tensor:
        """The model's logits for one sequence: with adapter `adapter` (loaded), or the model alone (PEFT injects
        its layers into the model itself, so with any adapter loaded the plain model is not plain: the wrapper must
        route the row to none)."""
        with self.lock, torch.inference_mode():
            ids = ids.to(self.loaded.model.device)
            if not self.adapters:
                return self.loaded.model(input_ids=ids).logits
            return self.peft(input_ids=ids, adapter_names=[adapter or "__base__"] * ids.shape[0]).logits

    def adapter_hint(self, path: str) -> str:
        """Why an adapter cannot attach to an int8 SFT model, when that is the reason."""
        if self.loaded.precision != "int8":
            return ""
        try:
            targets = json.loads((Path(path) / "adapter_config.json").read_text())["target_modules"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""
        on_int8 = sorted(set([targets] if isinstance(targets, str) else targets) - set(self.loaded.float_layers))
        if not on_int8:
            return ""
        return (
            f" It targets {', '.join(on_int8)}, which this server holds in int8 (adapters can attach only to "
            f"{', '.join(sorted(self.loaded.float_layers))}); to serve it, start with --precision float."
        )
