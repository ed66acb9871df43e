"""A version's reward model as a folder that loads elsewhere (`export --what reward-model`, `push
--reward-model-repo`): PEFT's files (the LoRA and the scalar head) with the base named by the SFT model's Hub id,
what it learned from, how often it agreed with votes it had not seen, and a model card that shows how to load it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import reward_models
from .errors import UserError
from .store import Store

CARD = """---
library_name: peft
base_model: {base}
pipeline_tag: text-classification
tags:
- reward-model
- trl
- alignment-playground
---

# Reward model v{version} (Alignment Playground)

A reward model: a LoRA on `{base}` with a scalar head, trained by trl's `RewardTrainer` (Bradley-Terry loss) on
{pairs} preference pairs people voted on in [Alignment Playground]{dataset}. It is a learned surrogate of
their judgment: it scores any answer, on prompts nobody voted on too.

| figure | value |
|---|---|
| pairs it learned from (new and replayed) | {pairs} |
| accuracy on those training pairs | {accuracy_train} |
| **agreement with later votes it had not trained on** (prequential: each vote judged before any round took it) | {agreement} |

The agreement is the honest figure; the training accuracy is what it fits. 0.5 is a coin.

## Use

```python
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{base}")
model = AutoModelForSequenceClassification.from_pretrained("{base}", num_labels=1)
# The score is read at the last token that is not padding: the pad token must be the one it was trained with.
model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
model = PeftModel.from_pretrained(model, "{repo}").eval()
conversation = [{{"role": "user", "content": "Why is the sky blue?"}},
                {{"role": "assistant", "content": "Sunlight scatters off air; blue scatters most."}}]
ids = tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)["input_ids"]
score = model(input_ids=ids).logits[0, 0].item()
```
"""


def reward_model_folder(
    store: Store,
    version: int,
    out: str | Path,
    *,
    sft_spec: str,
    sft_hub_id: str | None,
    dataset_repo: str | None = None,
    repo: str | None = None,
) -> Path:
    row = store.version(version) if version else None
    if row is None:
        raise UserError(
            f"Adapter version {version} does not exist."
            if version
            else "Version 0 is the SFT model itself: no round has trained a reward model for it."
        )
    if not reward_models.exists(row["path"]):
        raise UserError(
            f"Version {version} has no reward model (trained with --reward-model false, or its round is still "
            "training it). Fix: pick another version (`python -m playground versions`)."
        )
    out = Path(out)
    shutil.copytree(reward_models.folder_of(row["path"]), out, dirs_exist_ok=True)
    config = json.loads((out / "adapter_config.json").read_text())
    base = sft_hub_id or config.get("base_model_name_or_path") or sft_spec
    config["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    trained = (row.get("metrics") or {}).get("reward_model") or reward_models.summary_of(row["path"])
    judged = store.reward_agreement().get(version)
    (out / "README.md").write_text(
        CARD.format(
            base=base,
            version=version,
            pairs=trained.get("pairs", "?"),
            dataset=f" (dataset: `{dataset_repo}`)" if dataset_repo else "",
            accuracy_train=_share(trained.get("accuracy_train")),
            agreement=f"{judged['agreement']:.2f} on {judged['judged']} votes" if judged else "not measured yet",
            repo=repo or str(out),
        )
    )
    return out


def _share(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "–"
