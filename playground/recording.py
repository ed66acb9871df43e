"""A turn as stored: where it goes in its conversation (ChatTurn), the history it continues, and the finished
answers recorded in one transaction with the version that wrote each (Recorded). A turn with a failed answer is
shown but not stored: nobody should vote on a comparison with an answer missing."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from .generation import Answer
from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatTurn:
    """Where a new turn goes: its conversation, the turn it follows (a comparison id; None for the first) and the
    answer of that turn the person chose to continue from (None: the store's rule, see `Store.continuation`)."""

    chat_id: str
    after: int | None = None
    continue_from: int | None = None


@dataclass
class Recorded:
    """A finished generation as stored: the comparison id and each answer's id (keyed like the answers)."""

    comparison_id: int
    answer_ids: dict[str, int]


def continue_after(
    store: Store, session_id: str, comparison_id: int | None, chosen_answer_id: int | None = None
) -> tuple[list[dict], dict | None]:
    """(history, the answer it continues with) for the next turn after `comparison_id` (None: a new chat)."""
    if comparison_id is None:
        return [], None
    continued = store.continuation(comparison_id, session_id, chosen_answer_id)
    return store.next_history(comparison_id, continued), continued


def record(
    store: Store,
    prompt: str,
    answers: dict[str, Answer],
    session_id: str,
    mode="compare",
    category: str | None = None,
    *,
    history: list[dict] | None = None,
    parent_answer_id: int | None = None,
    chat_id: str | None = None,
) -> Recorded:
    """Store a comparison (a turn) and its answers, in one transaction."""
    rows = [
        {
            "arm": a.arm,
            "text": a.text,
            "model": a.model,
            "adapter_version": a.adapter_version,
            "settings": a.settings | {"dropped_turns": a.dropped_turns} if a.dropped_turns else a.settings,
            "seed": a.seed,
            "prompt_tokens": a.prompt_tokens,
            "new_tokens": a.new_tokens,
            "seconds": a.seconds,
            "ttft": a.ttft,
            "finish_reason": a.finish_reason,
        }
        for a in answers.values()
    ]
    comparison, ids = store.add_comparison(
        prompt.strip(),
        session_id,
        mode=mode,
        category=category,
        answers=rows,
        history=history,
        chat_id=chat_id,
        parent_answer_id=parent_answer_id,
    )
    return Recorded(comparison, dict(zip(answers, ids)))


def recorded(
    store: Store,
    stream: Iterator[dict[str, Answer]],
    prompt: str,
    session_id: str,
    mode: str,
    category: str | None,
    history: list[dict],
    parent: dict | None,
    chat: ChatTurn | None,
) -> Iterator[tuple[dict[str, Answer], Recorded | None]]:
    """The stream's updates, then the finished answers with their stored ids (None while streaming)."""
    answers = {}
    for answers in stream:
        yield answers, None
    if any(answer.error for answer in answers.values()):
        log.warning("Turn not recorded: %s", next(a.error for a in answers.values() if a.error))
        return
    parent_answer_id = parent["id"] if parent else None
    chat_id = chat.chat_id if chat else None
    ids = record(
        store,
        prompt,
        answers,
        session_id,
        mode,
        category,
        history=history,
        parent_answer_id=parent_answer_id,
        chat_id=chat_id,
    )
    yield answers, ids
