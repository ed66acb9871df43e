"""Drift per version: where the votes are taking the preference-tuned model, measured on a fixed prompt set.

After each round the trainer samples the new version's answers to the same prompts (assets/drift_prompts.jsonl, or
`--eval-prompts`), one answer a prompt, temperature 1 (its own distribution, nothing cut off), seeded, and reports:
- mean_tokens: answer length in tokens (end-of-turn included); hit_limit: the share that reached --eval-tokens;
- distinct_2: distinct word bigrams / all word bigrams over the answers (1 = no repetition; collapsing answers fall);
- kl_to_sft: a sequence-level estimate of KL(π_version ‖ π_SFT) from the version's own samples y, in nats per
  answer (`kl_estimate`: its expectation is that of log π_version(y) − log π_SFT(y), i.e. the mean implicit reward
  of the version's own answers divided by β, see explain.py). It is what DPO's β holds back;
- sft_perplexity: the perplexity of those answers under the SFT model (does it still write what fluent SFT text
  looks like).
The vote win rate is not stored here: it grows with every vote, so the dashboard reads it live.

Publishing never waits for this: the version serves first, then the trainer evaluates it (the first few seconds
of its life, while nothing else trains). A version without an evaluation of the current prompt set (version 0 =
the SFT model itself, versions from before, a trainer stopped mid-evaluation, a changed prompt set) is evaluated
when the trainer is idle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria

from .decoding import SeededSampler
from .models import eos_ids, load_policy
from .prompting import chat_prompt, load_prompts
from .runtimes import neutral
from .settings import RoundSettings
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_EVAL_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "drift_prompts.jsonl"
LOGIT_BUDGET = 64 * 2**20  # floats of logits per forward pass (256 MB)
METRICS = ("mean_tokens", "distinct_2", "kl_to_sft", "sft_perplexity")


@dataclass(frozen=True)
class EvalPlan:
    prompts: tuple[str, ...]
    max_new_tokens: int
    seed: int

    @property
    def key(self) -> str:
        """Names what was measured: evaluations of different prompt sets or lengths are not compared."""
        spec = json.dumps(
            {
                "prompts": self.prompts,
                "max_new_tokens": self.max_new_tokens,
                "seed": self.seed,
                "temperature": 1.0,
                "method": 1,
            },
            sort_keys=True,
        )
        return hashlib.sha1(spec.encode()).hexdigest()[:12]


def plan_of(settings: RoundSettings) -> EvalPlan | None:
    """The evaluation these settings ask for; None when turned off (`--eval-tokens 0`)."""
    if settings.eval_tokens <= 0:
        return None
    prompts = load_prompts(settings.eval_prompts or DEFAULT_EVAL_PROMPTS)
    return EvalPlan(tuple(p["prompt"] for p in prompts), settings.eval_tokens, settings.train_seed)


def distinct_n(texts: list[str], n: int = 2) -> float | None:
    """Distinct word n-grams / all word n-grams, over all texts together (corpus level); None without any."""
    grams = [tuple(words[i : i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def summarize(samples: list[dict], max_new_tokens: int) -> dict:
    """The drift metrics of samples {"text", "tokens", "logprob_sft", "kl"} (see the module docstring)."""
    tokens = sum(s["tokens"] for s in samples)
    return {
        "mean_tokens": tokens / len(samples),
        "hit_limit": sum(s["tokens"] >= max_new_tokens for s in samples) / len(samples),
        "distinct_2": distinct_n([s["text"] for s in samples]),
        "kl_to_sft": sum(s["kl"] for s in samples) / len(samples),
        "sft_perplexity": math.exp(-sum(s["logprob_sft"] for s in samples) / tokens) if tokens else None,
        "samples": len(samples),
    }


class EvaluationInterrupted(Exception):
    """An idle evaluation stopped because a round is due; nothing was stored, the version is evaluated later."""


class _Interrupt(StoppingCriteria):
    """Stops the drift samples when `due()` says so, asking at most once a second (it reads the store)."""

    def __init__(self, due: Callable[[], bool]):
        self.due, self.asked = due, float("-inf")  # the first step asks

    def __call__(self, input_ids, scores, **kwargs):
        if time.monotonic() - self.asked >= 1.0:
            self.asked = time.monotonic()
            if self.due():
                raise EvaluationInterrupted()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def sample_and_score(
    model, tokenizer, plan: EvalPlan, adapter: bool, interrupt: Callable[[], bool] | None = None
) -> list[dict]:
    """The model's answers to the plan's prompts (one batch, temperature 1, a seed per prompt) with their summed
    log-probabilities under the model (recorded while sampling) and under the SFT model (one more pass over the
    batch). `adapter`: the model is a PeftModel whose active adapter is the version (the SFT model = the same
    model with it disabled); else it is the SFT model."""
    texts = [chat_prompt(tokenizer, p) for p in plan.prompts]
    add_special = not getattr(tokenizer, "chat_template", None)
    ends = eos_ids(model.generation_config, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(ends)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # a batch of prompts ends where answers start
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(model.device)
    finally:
        tokenizer.padding_side = side
    sampler = SeededSampler([plan.seed + i for i in range(len(texts))], 1.0, 1.0, record=True)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            **neutral.TRANSFORMERS,  # the raw distribution, as _answer_logprobs scores the reference
            max_new_tokens=plan.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=sorted(ends),
            logits_processor=[sampler],
            stopping_criteria=[_Interrupt(interrupt)] if interrupt else None,
            use_cache=True,
        )
    start = batch["input_ids"].shape[1]
    answers, lengths = out[:, start:].cpu(), []
    for row in answers.tolist():
        lengths.append(next((j + 1 for j, t in enumerate(row) if t in ends), len(row)))
    steps = torch.stack(sampler.recorded, dim=1)  # rows x steps
    policy = [steps[i, :n] for i, n in enumerate(lengths)]
    if adapter:
        with model.disable_adapter():
            reference = _answer_logprobs(model, batch["attention_mask"], out, lengths)
    else:
        reference = policy
    return [
        {
            "text": tokenizer.decode(answers[i, :n], skip_special_tokens=True),
            "tokens": n,
            "logprob": float(p.sum()),
            "logprob_sft": float(r.sum()),
            "kl": kl_estimate(p, r),
            "prompt_ids": batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist(),
            "answer_ids": answers[i, :n].tolist(),
        }
        for i, (n, p, r) in enumerate(zip(lengths, policy, reference))
    ]


def kl_estimate(logprobs: torch.Tensor, logprobs_sft: torch.Tensor) -> float:
    """KL(π ‖ π_SFT) of one answer y sampled from π, from its per-token log-probabilities: Σ_t (e^d − 1 − d), with
    d = log π_SFT(y_t) − log π(y_t). Each term is an unbiased estimate of the KL of that token's distribution given
    the tokens before it (Schulman's "k3"), so the sum estimates the KL of the sequence; unlike the plain
    log π(y) − log π_SFT(y) (equal in expectation) it is never negative and varies less between samples."""
    d = logprobs_sft.double() - logprobs.double()
    return float((d.exp() - 1 - d).sum())


def _answer_logprobs(
    model, prompt_mask: torch.Tensor, sequences: torch.Tensor, lengths: list[int]
) -> list[torch.Tensor]:
    """log π(answer token | everything before it) per row of `generate`'s output (left-padded prompts, then the answers), in
    one pass as generate saw them: padding masked, positions counted from each row's first token, and logits only
    for the answer positions (the prompts' would cost a vocabulary-wide matrix product each); a few rows a pass,
    since logits over a large vocabulary take gigabytes."""
    steps = sequences.shape[1] - prompt_mask.shape[1]
    answer_mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    mask = torch.cat([prompt_mask, answer_mask.to(prompt_mask)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    per_pass = max(1, LOGIT_BUDGET // ((steps + 1) * model.config.get_text_config().vocab_size))
    sums = []
    with torch.inference_mode():
        for first in range(0, len(lengths), per_pass):
            rows = slice(first, first + per_pass)
            logits = (
                model(
                    input_ids=sequences[rows],
                    attention_mask=mask[rows],
                    position_ids=positions[rows],
                    logits_to_keep=steps + 1,
                )
                .logits[:, :-1]
                .float()
            )  # position t predicts answer token t
            logprobs = torch.log_softmax(logits, dim=-1).gather(2, sequences[rows, -steps:, None])[..., 0]
            sums += [logprobs[i, :n].cpu() for i, n in enumerate(lengths[rows])]
    return sums


def evaluate(model, tokenizer, plan: EvalPlan, adapter: bool, interrupt: Callable[[], bool] | None = None) -> dict:
    """The drift metrics of one version (`model` as in sample_and_score), with the seconds it took."""
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        metrics = summarize(sample_and_score(model, tokenizer, plan, adapter, interrupt), plan.max_new_tokens)
    finally:
        model.train(was_training)
    return metrics | {
        "prompts": len(plan.prompts),
        "max_new_tokens": plan.max_new_tokens,
        "seconds": time.perf_counter() - started,
    }


def evaluate_and_store(
    store: Store,
    version: int,
    model,
    tokenizer,
    plan: EvalPlan,
    adapter: bool,
    interrupt: Callable[[], bool] | None = None,
) -> dict:
    metrics = evaluate(model, tokenizer, plan, adapter, interrupt)
    store.save_version_eval(version, plan.key, metrics)
    log.info(
        "Drift of v%d on %d prompts (%.1f s): %s",
        version,
        len(plan.prompts),
        metrics["seconds"],
        {k: round(metrics[k], 3) for k in METRICS if metrics[k] is not None},
    )
    return metrics


def evaluate_stored_version(
    store: Store, version: int, sft_dir: str, plan: EvalPlan, interrupt: Callable[[], bool] | None = None
) -> dict:
    """Evaluate a published version (or 0, the SFT model) from its files; a version that cannot be evaluated gets
    its error stored instead, so an idle trainer does not try it again and again. A version with no record is
    not evaluated and nothing is stored: there is no version to hold the result."""
    if version and store.version(version) is None:
        return {"error": f"Adapter version {version} does not exist."}
    try:
        model, tokenizer = load_policy(sft_dir)
        if torch.cuda.is_available():  # where the trainer trains (trl's default device)
            model = model.to("cuda")
        adapter = False
        if version:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, store.version(version)["path"])
            adapter = True
        return evaluate_and_store(store, version, model, tokenizer, plan, adapter, interrupt)
    except EvaluationInterrupted:
        raise
    except Exception as error:
        log.exception("Could not evaluate v%d", version)
        metrics = {"error": f"{type(error).__name__}: {error}"}
        store.save_version_eval(version, plan.key, metrics)
        return metrics


def evaluate_one_missing(
    store: Store, sft_dir: str, plan: EvalPlan | None, interrupt: Callable[[], bool] | None = None
) -> int | None:
    """Evaluate one version that has no evaluation of `plan` yet (version 0 first, then the newest); returns it, or
    None when every version has one. What an idle trainer does, one version at a time; `interrupt` (asked about
    once a second) ends it early with EvaluationInterrupted when a round is due, so a round never waits for it."""
    if plan is None:
        return None
    missing = store.versions_missing_eval(plan.key)
    if not missing:
        return None
    version = 0 if 0 in missing else max(missing)
    evaluate_stored_version(store, version, sft_dir, plan, interrupt)
    return version
