"""What layers above the scheduler do when a stopped lease starts again (`services.lease_start`).

The scheduler knows nothing of workloads, yet a lease's workload must come back when its cards do. So the
workloads layer registers a hook here when the apps are ready (workloads/apps.py), and `lease_start` calls
`restarted` inside its transaction once the cards are placed and admitted: a hook that raises rolls the start back.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeAlias

from scheduler.models import Lease

Hook: TypeAlias = Callable[[Lease, datetime], None]
_hooks: list[Hook] = []


def register(hook: Hook) -> None:
    """Add a hook, once (apps' ready() may run twice in a test process)."""
    if hook not in _hooks:
        _hooks.append(hook)


def restarted(lease: Lease, now: datetime) -> None:
    """Tell every registered layer that `lease` holds cards again from `now`."""
    for hook in _hooks:
        hook(lease, now)
