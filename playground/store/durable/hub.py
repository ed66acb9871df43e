"""A dataset repo on the Hub as the target's second home (a Space without a bucket volume): downloaded to restore
from when the local target is empty, and kept up to date by huggingface_hub's CommitScheduler."""

from __future__ import annotations

import os
from pathlib import Path

from .target import PARTIAL, DurableCopyError, data_set_folder, shards

# What the scheduler must never upload: folders still being copied (renamed when complete) and temporary files.
HUB_IGNORE = [f"**/{PARTIAL}*", f"**/{PARTIAL}*/**", f"{PARTIAL}*"]


def download_hub_copy(repo_id: str, data_set: str, dest: str | os.PathLike, api=None) -> Path | None:
    """The data set's folder from the dataset repo, downloaded into `dest`: what a restart restores from when the
    local target is empty. None when the repo does not exist yet (a first start). Any other failure raises: starting
    empty while the repo holds data would fork its history."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = api or HfApi()
    prefix = f"datasets/{data_set}/"
    try:
        api.snapshot_download(repo_id=repo_id, repo_type="dataset", allow_patterns=[prefix + "**"], local_dir=dest)
    except RepositoryNotFoundError:
        return None
    except Exception as error:
        raise DurableCopyError(
            f"Could not read the dataset repo {repo_id} to restore from ({type(error).__name__}: {error}). "
            f"Not starting with an empty store: its new ids would collide with the repo's. Fix the token "
            f"(HF_TOKEN needs read access) or the network, or unset PLAYGROUND_HUB_DATASET."
        ) from error
    folder = data_set_folder(dest, data_set)
    return folder if shards(folder) else None


def start_hub_scheduler(repo_id: str, folder: str | os.PathLike, every_minutes: float = 5, api=None):
    """huggingface_hub's CommitScheduler on the target folder: every few minutes it uploads what was appended
    (it reads each file only up to its size when listed, which is why everything in the folder is append-only)."""
    from huggingface_hub import CommitScheduler

    return CommitScheduler(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=folder,
        every=every_minutes,
        private=True,
        ignore_patterns=HUB_IGNORE,
        hf_api=api,
    )
