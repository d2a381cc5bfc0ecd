"""The scheduler's domain errors (mapped to the API's error JSON by accounts.errors)."""

from __future__ import annotations

from accounts.errors import Conflict


class NoCapacity(Conflict):
    """The request cannot be met in full now; nothing was held."""

    code = "no_capacity"

    def __init__(self, message: str = "Not enough free capacity matches this request.", **kwargs):
        super().__init__(message, **kwargs)
