"""A running playground's durable copy: bound to the store before anything is served, copying in the background,
woken by every write the store commits, and pushed to a dataset repo on the Hub when one is set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .copier import DurableCopy
from .hub import download_hub_copy, start_hub_scheduler
from .target import is_empty, shards

log = logging.getLogger(__name__)


class DurableLink:
    """The durable copy of one store (`copy`), how binding went (`binding`: 'restored', 'continued' or 'started'),
    and the dataset repo's scheduler when there is one."""

    def __init__(self, copy: DurableCopy, binding: str, hub_dataset: str | None = None, hub_scheduler=None):
        self.copy = copy
        self.binding = binding
        self.hub_dataset = hub_dataset
        self.hub_scheduler = hub_scheduler

    @property
    def last_error(self) -> str | None:
        return self.copy.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self.copy.last_error = value

    def start(self) -> None:
        self.copy.start()

    def wake(self) -> None:
        """Copy now rather than at the copier's next poll: a machine lost now loses less."""
        self.copy.wake()

    def stop(self, flush: bool = True) -> None:
        self.copy.stop(flush=flush)

    def status(self) -> dict:
        """How far the copy lags, how binding went, and why the dataset repo's last push failed (if it did)."""
        status = self.copy.status() | {"binding": self.binding, "hub_dataset": self.hub_dataset}
        future = getattr(self.hub_scheduler, "last_future", None)
        if future is not None and future.done() and future.exception() is not None:
            status["hub_error"] = f"{type(future.exception()).__name__}: {future.exception()}"
        return status


def link(store, data_set, settings, data_dir: str | os.PathLike) -> DurableLink | None:
    """Bind `store` (of `data_set`) to the durable copy `settings` name (ModelSettings: `--persist`, the dataset
    repo), before anything is served: restore an empty store from the copy (the target folder, else the dataset
    repo), or copy a store into an empty target. None when there is no durable copy. Raises DurableCopyError on a
    conflict. Every write the store commits from then on wakes the copier."""
    target = settings.resolved_persist()
    if target is None:
        return None
    about = {"base": data_set.base, "sft": data_set.sft}
    copy = DurableCopy(store, data_set.name, target, about)
    restore_from = None
    repo = settings.hub_dataset
    if repo and not shards(copy.folder) and is_empty(store):
        restore_from = download_hub_copy(repo, data_set.name, Path(data_dir) / "hub-download")
    binding = copy.bind(restore_from)
    log.info("Durable copy to %s: %s.", target, binding)
    linked = DurableLink(copy, binding, repo)
    if repo:
        try:
            linked.hub_scheduler = start_hub_scheduler(repo, target)
        except Exception as error:  # the folder copy goes on; the page says the repo is not reachable
            linked.last_error = f"dataset repo {repo}: {type(error).__name__}: {error}"
            log.error("Cannot push the durable copy to %s: %s", repo, error)
    store.on_commit(linked.wake)
    return linked
