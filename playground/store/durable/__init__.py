"""The durable copy: every record the store writes, appended as JSON lines to a folder that outlives this machine,
and every adapter version's folder, copied once. An empty store is rebuilt from it (`restore`).

- target.py: the target folder's layout and what the copier and a restore share;
- copier.py: `DurableCopy`, binding a store to a target and copying what the change log noted (its thread too);
- restoring.py: `restore`, rebuilding an empty store from a target;
- hub.py: a dataset repo on the Hub as the target's second home;
- link.py: `link`, a running playground's durable copy (binding, the copier, the Hub scheduler, its status).
"""

from __future__ import annotations

from ..changelog import LOCAL_META_KEYS
from .copier import BATCH, DurableCopy
from .hub import HUB_IGNORE, download_hub_copy, start_hub_scheduler
from .link import DurableLink, link
from .restoring import read_records, restore
from .target import (
    COPY_FILE,
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    PARTIAL,
    RECORDS,
    DurableCopyError,
    data_set_folder,
    is_empty,
    read_copy_file,
    shards,
)

__all__ = [
    "BATCH",
    "COPY_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "HUB_IGNORE",
    "LOCAL_META_KEYS",
    "META_KEY",
    "PARTIAL",
    "RECORDS",
    "DurableCopy",
    "DurableCopyError",
    "DurableLink",
    "data_set_folder",
    "download_hub_copy",
    "is_empty",
    "link",
    "read_copy_file",
    "read_records",
    "restore",
    "shards",
    "start_hub_scheduler",
]
