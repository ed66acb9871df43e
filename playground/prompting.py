"""How a user's prompt becomes model input, for chat (SFT) models and for base models; prompt files.

Base (pretrained) models have no chat template. They get the plain completion framing of a Q&A page, which a
web-text model continues with an answer:

    Q: <prompt>
    A:

Their answer ends at the first blank line after some text, or where the model starts a new "Q:"/"A:" turn,
which is where such a model goes on to invent the next exchange. The stop text is not part of the answer.
(A blank line before any text does not count: pretrained models often open an answer with one.)
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_PROMPT_CHARS = 2000

BASE_TEMPLATE = "Q: {prompt}\nA:"
BASE_STOP_STRINGS = ("\n\n", "\nQ:", "\nA:")

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts.jsonl"


class PromptError(ValueError):
    """A prompt the playground will not send to the models; the message says why."""


def check_prompt(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    text = (prompt or "").strip()
    if not text:
        raise PromptError("The prompt is empty: type a question or an instruction.")
    if len(text) > max_chars:
        raise PromptError(
            f"The prompt has {len(text):,} characters; the limit is {max_chars:,} "
            "(these small models lose the thread long before that). Shorten it."
        )
    return text


def base_prompt(prompt: str) -> str:
    return BASE_TEMPLATE.format(prompt=prompt.strip())


def chat_prompt(tokenizer, prompt: str) -> str:
    """The SFT model's own chat template; a model without one gets the base framing (and says so in `info`)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.strip()}], tokenize=False, add_generation_prompt=True
        )
    return base_prompt(prompt)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """The answer up to the earliest stop string after its first non-blank character, and whether one was found."""
    start = len(text) - len(text.lstrip())
    cut = min((i for i in (text.find(s, start) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def load_prompts(path: str | Path | None = None) -> list[dict]:
    """Read a prompt file: one JSON object a line, {"prompt": ..., "category": ...}; blank lines are skipped."""
    path = Path(path) if path else DEFAULT_PROMPTS
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompts.append({"prompt": check_prompt(row["prompt"]), "category": row.get("category")})
            except (json.JSONDecodeError, KeyError, TypeError, PromptError) as error:
                raise PromptError(f"{path}:{number}: not a prompt line ({error}).") from error
    if not prompts:
        raise PromptError(f"{path} holds no prompts.")
    return prompts
