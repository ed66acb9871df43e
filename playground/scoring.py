"""Scoring answers with the SFT model in torch, whatever runtime serves: how natural an answer looks to the model
the adapter started from (`sft_nll`, the fluency yardstick of `simulate` and `drift`), and the log-probabilities
of an answer's tokens with and without an adapter version (`answer_logprobs`, the two terms of DPO's implicit
reward that explain.py shows).

With the torch runtime the scorer reads the weights that serve (and an adapter the server already holds); with the
onnx or vllm runtime it loads a torch copy of the SFT weights on first use.
"""

from __future__ import annotations

import threading

import torch

from .prompting import chat_prompt, check_history, prompt_encoding
from .runtimes import AdapterError
from .runtimes.torch_runtime import TorchRuntime


class Scorer:
    def __init__(self, sft, serving: TorchRuntime | None = None, load_weights=None):
        """sft: the SFT model's LoadedModel (its tokenizer); serving: the torch runtime that serves it, if one
        does; load_weights(): the SFT model's torch weights, for a scorer of its own."""
        self.sft = sft
        self._runtime = serving
        self._load_weights = load_weights
        self._loading = threading.Lock()

    def _torch(self) -> TorchRuntime:
        with self._loading:
            if self._runtime is None:
                if self.sft.model is None:
                    self.sft.model = self._load_weights()
                self._runtime = TorchRuntime(self.sft)
        return self._runtime

    def sft_nll(self, prompt: str, answer: str, history: list[dict] | None = None) -> float | None:
        """Mean negative log-likelihood per answer token under the SFT model, adapter off, given the conversation
        exactly as generation renders it for the SFT model (lower is more fluent)."""
        if not answer.strip():
            return None
        tokenizer = self.sft.tokenizer
        context = chat_prompt(tokenizer, prompt, check_history(history))
        encoding = prompt_encoding(tokenizer)
        ids = tokenizer(context + answer.strip(), return_tensors="pt", **encoding).input_ids
        start = len(tokenizer(context, **encoding).input_ids)
        logits = self._torch().logits(ids)
        targets = ids[0, 1:].to(logits.device)
        return float(torch.nn.functional.cross_entropy(logits[0, start - 1 : -1].float(), targets[start - 1 :]))

    def answer_logprobs(
        self, prompt_ids: list[int], answer_ids: list[int], version: int, path: str | None
    ) -> tuple[list[float], list[float]]:
        """log π(token | everything before it) of each answer token, with adapter `version` (from `path`; 0: none)
        and without it (the SFT model). An adapter the torch runtime already serves under `v<N>` is used as it
        is; another version is loaded for the call and dropped after it."""
        ids = torch.tensor([list(prompt_ids) + list(answer_ids)])
        start = len(prompt_ids)
        runtime = self._torch()
        with runtime.lock:
            reference = token_logprobs(runtime.logits(ids), ids, start)
            if not version:
                return reference, reference
            name, loaded_now = f"v{version}", False
            if name not in runtime.adapters:
                if not path:
                    raise AdapterError(f"Adapter v{version} has no folder to load.")
                name, loaded_now = f"scoring-v{version}", True
                try:
                    runtime.attach(name, path)
                except Exception as error:
                    raise AdapterError(f"Adapter v{version} at {path} could not be loaded: {error}.") from error
            try:
                policy = token_logprobs(runtime.logits(ids, name), ids, start)
            finally:
                if loaded_now:
                    runtime.detach(name)
            return policy, reference


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, start: int) -> list[float]:
    """log-probabilities of ids[0, start:] under the logits of one sequence (row 0), each given what precedes it."""
    logprobs = torch.log_softmax(logits[0, start - 1 : -1].float(), dim=-1)
    return logprobs.gather(1, ids[0, start:].to(logprobs.device)[:, None])[:, 0].tolist()
