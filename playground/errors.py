"""The project's user-facing error: a mistake in what a person asked for (a setting, a name, a value), shown as a
one-line message with the fix. Anything else that goes wrong is a bug and keeps its traceback (the CLI prints
"error:" only for these, the store's StoreError, PromptError, ModelLoadError and AdapterError)."""

from __future__ import annotations


class UserError(ValueError):
    """A request that cannot be done as asked; the message says why and what to do instead."""
