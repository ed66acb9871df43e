"""How `generate`'s token steps become answers: sampling with one seeded generator per row, where a base model's
answer ends, and per-row streaming of text events.

transformers' own `stop_strings` cannot replace `AnswerBoundary`: it stops at a stop string wherever it appears,
while a base model's answer may open with a blank line, which must not end it (see prompting.cut_at_stop).
"""

from __future__ import annotations

import copy
import queue
import threading

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation import TemperatureLogitsWarper, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer

from .prompting import cut_at_stop


class SeededSampler(LogitsProcessor):
    """Temperature + top-p sampling with one generator per row, expressed as a logits processor.

    It masks every token but the sampled one, so `generate` runs in greedy mode and simply takes it. Drawing
    from per-row generators (instead of torch's global RNG, which `generate` uses) keeps answers reproducible
    when several generations run in parallel threads and when rows are batched together.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, record: bool = False):
        """record: keep each step's log-probabilities of the sampled tokens (`recorded`, one tensor per step) as
        the sampling distribution gives them: at temperature 1 without top-p, the model's own log π(token)."""
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.recorded: list[torch.Tensor] | None = [] if record else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1).cpu()
        chosen = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators)])
        if self.recorded is not None:
            self.recorded.append(torch.log_softmax(scores.float(), dim=-1).cpu().gather(1, chosen)[:, 0])
        masked = torch.full_like(scores, float("-inf"))
        return masked.scatter_(1, chosen.to(scores.device), 0.0)


class AnswerBoundary(StoppingCriteria):
    """Stops a row where its answer ends (see prompting.cut_at_stop); also stops everything when cancelled."""

    def __init__(self, tokenizer, prompt_len: int, stops: tuple[str, ...], cancel: threading.Event):
        self.tokenizer, self.prompt_len, self.stops, self.cancel = tokenizer, prompt_len, stops, cancel

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.cancel.is_set():
            return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor([cut_at_stop(t, self.stops)[1] for t in texts], device=input_ids.device)


class RowStreamer(BaseStreamer):
    """Turns `generate`'s per-step token tensors into per-arm text events on a queue."""

    def __init__(self, events: queue.Queue, arms: list[str], tokenizer, stops: tuple[str, ...], eos_ids: set[int]):
        self.events, self.arms, self.tokenizer, self.stops, self.eos_ids = events, arms, tokenizer, stops, eos_ids
        self.tokens: list[list[int]] = [[] for _ in arms]
        self.finished = [False] * len(arms)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt ids
            self.prompt_seen = True
            return
        self.step(value.reshape(len(self.arms), -1)[:, -1].tolist())

    def step(self, tokens: list[int | None]) -> None:
        """One new token per row; None: the decoder ended that row (its context is full)."""
        self.rows(list(range(len(self.arms)))).step(tokens)

    def token(self, row: int, token: int) -> None:
        """One new token of one row (a runtime that streams rows separately calls this from each row's thread)."""
        if self.finished[row]:
            return  # a finished row is padded until the batch ends
        if token in self.eos_ids:
            self.finish(row, "eos")
            return
        self.tokens[row].append(token)
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        text, stopped = cut_at_stop(text, self.stops) if self.stops else (text, False)
        self.events.put(("text", self.arms[row], text, len(self.tokens[row])))
        if stopped:
            self.finish(row, "stop")

    def finish(self, row: int, reason: str) -> None:
        if self.finished[row]:
            return
        self.finished[row] = True
        self.events.put(("done", self.arms[row], reason, len(self.tokens[row]) + (reason == "eos")))

    def end(self) -> None:
        for row in range(len(self.arms)):
            self.finish(row, "length")

    def rows(self, indexes: list[int]) -> StreamerRows:
        """This streamer seen through some of its rows (a decoder that runs only those)."""
        return StreamerRows(self, indexes)


class StreamerRows:
    """`step` and `finished` of a RowStreamer, for the rows `indexes` only, in that order."""

    def __init__(self, streamer: RowStreamer, indexes: list[int]):
        self.streamer, self.indexes = streamer, indexes

    def step(self, tokens: list[int | None]) -> None:
        for index, token in zip(self.indexes, tokens):
            if token is None:
                self.streamer.finish(index, "length")
            else:
                self.streamer.token(index, token)

    @property
    def finished(self) -> list[bool]:
        return [self.streamer.finished[i] for i in self.indexes]


class Mirror:
    """A queue proxy that repeats a row's events for rows that would generate exactly the same tokens."""

    def __init__(self, events: queue.Queue, mirrors: dict[str, list[str]]):
        self.events, self.mirrors = events, mirrors

    def put(self, event) -> None:
        self.events.put(event)
        for key in self.mirrors.get(event[1], ()):
            self.events.put((event[0], key, *copy.copy(event[2:])))
