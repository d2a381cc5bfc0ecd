"""Database connections of a thread's own, for tests that race requests against each other."""

from __future__ import annotations

import copy

from django.db import connections


def own_connection() -> None:
    """Give this thread a connection of its own, outside the pool."""
    base = connections["default"].settings_dict
    settings_dict = copy.deepcopy(base)
    settings_dict.get("OPTIONS", {}).pop("pool", None)
    connections["default"] = connections["default"].__class__(settings_dict, "default")
