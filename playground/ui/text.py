"""Text the page shows: dynamic text inside Markdown, answer titles and detail lines, chat columns.

Every answer is shown in a Chatbot, which renders Markdown: prompts and answers go through `shown()`, so HTML in
them is shown as text and never rendered. Dynamic text inside Markdown goes through `code()`.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from ..generation import ARM_TITLES
from ..judging import NO_REWARD_MODEL


def code(text) -> str:
    """Dynamic text inside Markdown as a code span: shown literally, whatever characters it holds."""
    text = " ".join(str(text).split())[:300].replace("`", "'")
    return f"`{text}`"


def short_model(model: str) -> str:
    # A local folder's full path is long and says nothing to a visitor; its last part names the model.
    return Path(model).name if model.startswith(("/", ".", "~")) else model


def title(arm: str, model: str, version: int) -> str:
    suffix = f" v{version}" if arm == "pref" else ""
    return f"#### {ARM_TITLES[arm]}{suffix} · {code(short_model(model))}"


def blind_title(column: int) -> str:
    return f"#### Answer {column + 1}"


def meta(answer: dict, revealed: bool) -> str:
    if not answer.get("done", True):
        return f"writing… {answer.get('new_tokens') or 0} tokens"
    if answer.get("error"):
        return f"⚠ not written: {answer['error']}"
    parts = [f"{answer.get('new_tokens') or 0} tokens", f"{answer.get('seconds') or 0:.1f} s"]
    if answer.get("finish_reason") == "length":
        parts.append("stopped at the token limit")
    if revealed and answer.get("arm") == "pref" and not answer.get("adapter_version"):
        parts.append("v0 = the SFT model itself (no DPO round yet)")
    if answer.get("dropped_turns"):
        parts.append(f"did not see the {answer['dropped_turns']} oldest turn(s): the conversation no longer fits")
    if answer.get("reward") is not None:
        parts.append(f"reward model v{answer['reward_version']}: {answer['reward']:+.2f}")
    elif answer.get("reward_version") == 0:
        parts.append(NO_REWARD_MODEL)
    return " · ".join(parts)


# ---- chat columns -----------------------------------------------------------------------------------------

_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]*`)", re.DOTALL)  # fenced blocks (also unfinished ones) and code spans


def shown(text: str) -> str:
    """Text for a Chatbot, which renders Markdown: HTML in a prompt or an answer is escaped, so it shows as text and
    never runs (code blocks and spans are left alone: Markdown shows them literally already, and escaping there
    would print `&lt;`)."""
    parts = _CODE.split(str(text))
    return "".join(part if i % 2 else html.escape(part, quote=False) for i, part in enumerate(parts))


def transcript(history: list[dict], kept: list[str]) -> list[dict]:
    """The earlier turns as chat messages, each answer marked with whose answer the conversation kept."""
    messages = []
    for i, message in enumerate(history):
        content = shown(message["content"])
        if message["role"] == "assistant" and i // 2 < len(kept):
            content += f"\n\n*↪ kept: {kept[i // 2]}*"
        messages.append({"role": message["role"], "content": content})
    return messages


EMPTY_ANSWER = "*(no answer: the model stopped at once)*"


def chat_column(earlier: list[dict], prompt: str, text: str | None, done: bool = False) -> list[dict]:
    """One column's chat: the shared earlier turns, the new question and this column's answer (while it streams;
    a finished empty answer says so rather than vanish)."""
    messages = earlier + [{"role": "user", "content": shown(prompt)}]
    if text or done:
        messages.append({"role": "assistant", "content": shown(text) if text else EMPTY_ANSWER})
    return messages


def kept_label(answer: dict | None) -> str:
    if answer is None:
        return ""
    if answer["arm"] == "human":
        return "the person's own answer"
    return f"{ARM_TITLES[answer['arm']]}'s answer"


def answer_dict(answer) -> dict:
    return {
        "arm": answer.arm,
        "model": answer.model,
        "adapter_version": answer.adapter_version,
        "text": answer.text,
        "new_tokens": answer.new_tokens,
        "seconds": answer.seconds,
        "finish_reason": answer.finish_reason,
        "done": answer.done,
        "dropped_turns": answer.dropped_turns,
        "reward": answer.reward,
        "reward_version": answer.reward_version,
        "error": answer.error,
    }
