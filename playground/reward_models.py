"""Reward models: a LoRA on the SFT model with a scalar head (`AutoModelForSequenceClassification`, one label),
trained on people's pairs by trl's `RewardTrainer` (training/reward_model.py) and read here, in the trainer and in
the server alike, so an answer gets the same score wherever it is scored.

What a reward model reads is what trl's `RewardTrainer` trained it on: the conversation and the answer rendered by
the SFT model's chat template, as one sequence; the score is the head's output at the last token that is not
padding. The pad token is the tokenizer's (its EOS when it has none: models.pad_with_eos) in training and scoring
alike, since it decides which token that is.

A version's reward model lives in its folder's `reward_model/` (PEFT's format: the LoRA weights and the head,
`modules_to_save`), so it is published, copied and exported with the version.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .models import pad_with_eos
from .store.versions import REWARD_MODEL_FOLDER

FOLDER = REWARD_MODEL_FOLDER  # inside a version's folder
SUMMARY = "reward_model.json"  # what the trainer measured of it (pairs, accuracy_train), beside PEFT's files


def folder_of(version_path: str | Path) -> Path:
    return Path(version_path) / FOLDER


def exists(version_path: str | Path | None) -> bool:
    return bool(version_path) and (folder_of(version_path) / "adapter_config.json").is_file()


def summary_of(version_path: str | Path) -> dict:
    try:
        return json.loads((folder_of(version_path) / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}


def load_base(sft_dir: str):
    """The SFT model with a fresh scalar head, float32, and its tokenizer with a pad token: what a reward model is
    trained on and loaded onto."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = pad_with_eos(AutoTokenizer.from_pretrained(sft_dir))
    model = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def shared_base(causal_model, tokenizer):
    """A sequence-classification model whose layers read the very tensors of `causal_model` (the SFT weights a
    server already holds for scoring: no second copy in memory), with a scalar head. None when the weights do not
    fit one (an int8 model, another architecture): then `load_base` loads a copy."""
    from transformers import AutoModelForSequenceClassification

    config = causal_model.config.__class__.from_dict(causal_model.config.to_dict())
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    except (ValueError, KeyError):
        return None
    # A causal model a runtime serves may carry LoRA layers (PEFT wraps each Linear as `base_layer`): its base
    # weights are the SFT model's all the same.
    tensors = [*causal_model.named_parameters(), *causal_model.named_buffers()]  # rotary buffers are not persistent
    state = {
        name.removeprefix("base_model.model.").replace(".base_layer.", "."): tensor.data
        for name, tensor in tensors
        if "lora_" not in name and not name.removeprefix("base_model.model.").startswith("lm_head")
    }
    wanted = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    missing = wanted - set(state) - {"score.weight", "score.bias"}
    if missing or any(state[name].dtype != torch.float32 for name in wanted & set(state)):
        return None
    model.load_state_dict({name: state[name] for name in wanted & set(state)}, strict=False, assign=True)
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name in state:  # a buffer that is not persistent: load_state_dict leaves it alone
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = state[name]
    model.score = torch.nn.Linear(config.hidden_size, 1, bias=False)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return None
    return model.eval()


def attach(base_model, path: str | Path):
    """The reward model in `path` (PEFT folder) on `base_model`, for scoring."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(path)).eval()


def sequence(tokenizer, messages: list[dict], answer: str, finished: bool = True) -> list[int]:
    """Token ids of a conversation ending in `answer`, as `RewardTrainer` tokenizes a conversational pair. An answer
    cut at the token limit (`finished` false) leaves its turn open, as the reward model was trained to read one
    (training/unfinished.py)."""
    conversation = list(messages) + [{"role": "assistant", "content": answer}]
    if getattr(tokenizer, "chat_template", None):
        return list(
            tokenizer.apply_chat_template(
                conversation, tokenize=True, return_dict=True, continue_final_message=not finished
            )["input_ids"]
        )
    # Without a chat template no turn closes (training leaves such answers as trl makes them): `finished` is moot.
    text = "".join(m["content"] + "\n" for m in messages) + answer + (tokenizer.eos_token or "")
    return tokenizer(text).input_ids


@torch.inference_mode()
def score(model, tokenizer, conversations: list[tuple], batch: int = 4) -> list[float]:
    """The reward model's score of each (messages, answer) or (messages, answer, finished)."""
    out = []
    for start in range(0, len(conversations), batch):
        rows = [sequence(tokenizer, *conversation) for conversation in conversations[start : start + batch]]
        padded = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        out += [float(x) for x in logits[:, 0]]
    return out
