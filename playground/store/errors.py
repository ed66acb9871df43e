"""The store's one error type, below every other store module so each can raise it."""


class StoreError(Exception):
    """A request the store refuses; the message is meant for people."""
