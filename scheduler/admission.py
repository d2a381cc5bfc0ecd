"""Admission: whether an organisation may take on the cards a lease was just given, as decided by a layer above.

The scheduler places cards and knows nothing of money; billing does, and sits above it. So billing registers its
check here when the apps are ready (billing/apps.py), and `lease_create` and a growing `lease_resize` call
`admit` inside their transaction once the new cards are placed (locked) and priced, just before their allocation
rows are written (placement's `before_insert`; their `pk` is None then); `lease_start` after they are written. A
check that raises (402 `insufficient_funds`) rolls the whole transaction back, so nothing stays allocated.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeAlias

from scheduler.models import Allocation, Lease

Check: TypeAlias = Callable[[Lease, list[Allocation], datetime], None]
_checks: list[Check] = []


def register(check: Check) -> None:
    """Add a check, once (apps' ready() may run twice in a test process)."""
    if check not in _checks:
        _checks.append(check)


def admit(lease: Lease, new: list[Allocation], now: datetime) -> None:
    """Run every check on `lease` and the allocations just made for it (`new`, written or about to be); raise what a
    check raises."""
    for check in _checks:
        check(lease, new, now)
