"""Hot swap without pauses: which adapter serves new requests, and which older ones stay loaded until the requests
that started with them end.

A request takes a lease on the serving adapter when it starts (so the version it records is the one that writes
it); a swap attaches the new adapter, points new requests at it and detaches the old one when its last lease ends.
A swap never waits for answers in flight, no answer sees a half-loaded or vanished adapter, and a stream of new
requests cannot starve a swap (they wait while one is pending).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from .runtimes import AdapterError, ModelRuntime

log = logging.getLogger(__name__)


class AdapterLeases:
    """The serving adapter of one runtime (version 0: none) and the adapters requests still use."""

    def __init__(self, runtime: ModelRuntime):
        self.runtime = runtime
        self._lock = threading.Condition()  # the serving version and the adapters in use
        self._swap = threading.Lock()  # one attach / detach at a time
        self._swaps_waiting = 0
        self.name: str | None = None  # the runtime's name of the serving adapter ("v<N>")
        self._leases: Counter = Counter()  # adapter name -> requests running with it
        self._retired: set[str] = set()  # replaced adapters still in use: detached when their last request ends
        self.version = 0
        self.path: str | None = None

    def use(self, version: int, path: str | None) -> None:
        """Serve `version` from `path` (0: no adapter). Raises AdapterError (nothing changes) when it cannot load."""
        with self._lock:
            self._swaps_waiting += 1
        try:
            self._swap_to(version, path)
        finally:
            with self._lock:
                self._swaps_waiting -= 1
                self._lock.notify_all()

    def _swap_to(self, version: int, path: str | None) -> None:
        name = f"v{version}" if version else None
        with self._swap:
            if version == self.version and name == self.name:
                return
            if name and not path:
                raise AdapterError(f"Adapter v{version} has no folder to load.")
            if name and name in self._retired:
                self._retired.discard(name)  # rolled back to a version still in use: it is loaded already
            elif name:
                try:
                    self.runtime.attach(name, str(path))
                except Exception as error:
                    hint = self.runtime.adapter_hint(str(path))
                    raise AdapterError(f"Adapter v{version} at {path} could not be loaded: {error}.{hint}") from error
            with self._lock:
                old, self.name = self.name, name
                self.version, self.path = (version, str(path)) if name else (0, None)
                if old and self._leases[old]:
                    self._retired.add(old)
                    old = None
            if old:
                self._detach(old)

    def lease(self) -> tuple[int, str | None]:
        """The serving version and adapter name for a request that starts now; give it back with `release`."""
        with self._lock:
            self._lock.wait_for(lambda: not self._swaps_waiting)
            if self.name:
                self._leases[self.name] += 1
            return self.version, self.name

    def release(self, name: str | None) -> None:
        if name is None:
            return
        with self._lock:
            self._leases[name] -= 1
            if self._leases[name] or name not in self._retired:
                return
        with self._swap, self._lock:  # the last request with a replaced version ended: free it
            if self._leases[name] or name not in self._retired:
                return
            self._retired.discard(name)
            self._leases.pop(name, None)
        self._detach(name)

    def _detach(self, name: str) -> None:
        try:
            self.runtime.detach(name)
        except Exception as error:  # the new version serves either way; the old one just lingers
            log.warning("Could not unload adapter %s: %s", name, error)
