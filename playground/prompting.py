"""How a user's prompt becomes model input, for chat (SFT) models and for base models; prompt files.

Base (pretrained) models have no chat template. They get the plain completion framing of a Q&A page, which a
web-text model continues with an answer:

    Q: <prompt>
    A:

Their answer ends at the first blank line after some text, or where the model starts a new "Q:"/"A:" turn,
which is where such a model goes on to invent the next exchange. The stop text is not part of the answer.
(A blank line before any text does not count: pretrained models often open an answer with one.)

Conversations. A request may carry earlier turns (`history`: messages alternating user, assistant, starting with
the user and ending with the assistant's answer; `check_history`). The chat arms render `history + [new prompt]`
with the SFT tokenizer's chat template (`add_generation_prompt=True`). The base arm gets the whole conversation on
the same Q&A page: each earlier turn is "Q: <user>\nA: <assistant>", turns are separated by one blank line
(BASE_TURN_SEPARATOR), and the new prompt is the last, open "Q: ...\nA:":

    Q: <user 1>
    A: <assistant 1>

    Q: <prompt>
    A:

Earlier contents go in verbatim (stripped); the stop strings apply only to what the model writes, so a base
answer still ends where it would begin the next "Q:". Without history the input is exactly the single-turn one.

Context budget. Prompt tokens plus `max_new_tokens` must fit in `context_budget` (the model's positions, capped
by CONTEXT_TOKENS_CAP). When a conversation does not fit, `fit_conversation` drops the oldest whole turns (a user
message with its answer), never the new prompt and never part of a message; each model counts with its own
tokenizer and framing, so the base and the chat arms may see different numbers of earlier turns.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_PROMPT_CHARS = 2000

BASE_TEMPLATE = "Q: {prompt}\nA:"
BASE_TURN_TEMPLATE = "Q: {user}\nA: {assistant}"
BASE_TURN_SEPARATOR = "\n\n"
BASE_STOP_STRINGS = ("\n\n", "\nQ:", "\nA:")

# The most tokens (prompt + answer) a request may use, whatever the model's own context length. These models run
# on CPUs: attention and the KV cache grow with the context, so every decoding step of a long conversation is
# slower for all three arms (and the base model and the SFT batch decode at the same time). Small models also
# lose the thread of long conversations long before their nominal context, so older turns are worth little.
CONTEXT_TOKENS_CAP = 2048
# Earlier turns beyond this many characters are refused rather than tokenized: at most CONTEXT_TOKENS_CAP tokens
# (some 8,000 characters) are ever used, and a request must not make the server tokenize megabytes.
MAX_HISTORY_CHARS = 100_000
ROLES = ("user", "assistant")

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


def check_history(history) -> list[dict]:
    """Earlier turns as clean {"role", "content"} messages (contents stripped, other keys dropped); None: none.

    They must alternate user, assistant, starting with the user and ending with the assistant's answer (the new
    prompt is passed on its own). Raises PromptError saying what is wrong."""
    if history is None:
        return []
    if not isinstance(history, (list, tuple)):
        raise PromptError(
            f'The history must be a list of {{"role", "content"}} messages, not {type(history).__name__}.'
        )
    messages, total = [], 0
    for number, message in enumerate(history, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise PromptError(
                f'History message {number} is not a {{"role": ..., "content": ...}} object: {message!r:.80}.'
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise PromptError(f"History message {number} has role {role!r}; the roles are 'user' and 'assistant'.")
        expected = ROLES[(number - 1) % 2]
        if role != expected:
            raise PromptError(
                f"History message {number} is from the {role}, but the {expected} comes next: the "
                "history alternates user, assistant, ..., starting with the user."
            )
        if not isinstance(content, str):
            raise PromptError(
                f"History message {number} ({role}): the content must be text, not {type(content).__name__}."
            )
        text = content.strip()
        if not text:
            raise PromptError(f"History message {number} ({role}) is empty.")
        if role == "user":
            try:
                check_prompt(text)
            except PromptError as error:
                raise PromptError(f"History message {number} (user): {error}") from error
        total += len(text)
        messages.append({"role": role, "content": text})
    if messages and messages[-1]["role"] != "assistant":
        raise PromptError(
            "The history ends with a user message: it must end with the assistant's answer "
            "(the new prompt is passed on its own)."
        )
    if total > MAX_HISTORY_CHARS:
        raise PromptError(
            f"The earlier turns have {total:,} characters; the limit is {MAX_HISTORY_CHARS:,} (far more "
            "than these models can read at once). Start a new conversation."
        )
    return messages


def base_prompt(prompt: str, history: list[dict] | None = None) -> str:
    """The base framing: earlier turns (already checked) as Q/A pairs, then the open "Q: <prompt>\nA:"."""
    turns = [
        BASE_TURN_TEMPLATE.format(user=history[i]["content"].strip(), assistant=history[i + 1]["content"].strip())
        for i in range(0, len(history or ()), 2)
    ]
    return BASE_TURN_SEPARATOR.join([*turns, BASE_TEMPLATE.format(prompt=prompt.strip())])


def chat_prompt(tokenizer, prompt: str, history: list[dict] | None = None) -> str:
    """The SFT model's own chat template over `history + [prompt]`; a model without one gets the base framing
    (and says so in `info`). `history`: already checked (check_history)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": m["role"], "content": m["content"].strip()} for m in history or ()]
        return tokenizer.apply_chat_template(
            [*messages, {"role": "user", "content": prompt.strip()}], tokenize=False, add_generation_prompt=True
        )
    return base_prompt(prompt, history)


def prompt_encoding(tokenizer) -> dict:
    """How a prompt text is tokenized: a chat template writes its own special tokens; a plain framing gets the
    tokenizer's usual ones (a BOS token, for models that use one)."""
    return {"add_special_tokens": not tokenizer.chat_template}


def encode_prompt(tokenizer, text: str) -> list[int]:
    """The token ids a model is fed for a rendered prompt (chat_prompt, base_prompt)."""
    return tokenizer(text, **prompt_encoding(tokenizer))["input_ids"]


def context_budget(config, tokenizer) -> int:
    """The tokens one request may use (prompt + answer): the model's positions (the config's
    max_position_embeddings, the tokenizer's model_max_length when it is a real number, the smaller of the two),
    capped by CONTEXT_TOKENS_CAP."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limits = [
        CONTEXT_TOKENS_CAP,
        getattr(text_config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    return min(n for n in limits if isinstance(n, int) and 0 < n < 10**7)


def fit_conversation(
    messages: list[dict], count_tokens, budget: int, *, answer_tokens: int = 0, model: str = "the model"
) -> tuple[list[dict], int]:
    """Drop the oldest earlier turns until `count_tokens(messages) + answer_tokens <= budget`.

    messages: earlier turns (user, assistant pairs) followed by the new user message. Whole turns go, oldest
    first; the new message always stays. Returns (the messages kept, how many turns were dropped): the fewest
    drops that fit (the count is found by bisection, so long histories take a few renders, not one per turn).
    Raises PromptError when even the new message alone does not fit."""
    turns = (len(messages) - 1) // 2
    room = budget - answer_tokens

    def fits(dropped: int) -> bool:
        return count_tokens(messages[2 * dropped :]) <= room

    if not fits(turns):
        alone = count_tokens(messages[-1:])
        raise PromptError(
            f"The prompt takes {alone:,} tokens of {model}'s {budget:,}-token context, and the answer may need "
            f"{answer_tokens:,} more: shorten the prompt or ask for fewer new tokens."
        )
    if fits(0):
        return list(messages), 0
    low, high = 0, turns  # fits(low) is False, fits(high) is True
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return list(messages[2 * high :]), high


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
