"""Reads for an elastic lease's chart: the cards it held over time (a step series from its allocations' periods)
beside the mean utilisation of the cards it held (from the agents' telemetry), and its scaling steps (its 'scaled'
and 'resized' events). The lease page (marketplace/views_scaling.py) draws it from
`GET /api/v1/leases/{id}/scaling/history/`.

Tenant-safe like `scheduler.selectors.lease_telemetry`, which the utilisation is read through: only the lease's own
cards, each only over the time the lease held it, roll-up buckets only when they lie wholly inside that time.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.utils import timezone

from inventory.selectors import chart_step
from scheduler.models import Lease, LeaseEvent
from scheduler.selectors import lease_telemetry, period_range

# A resize by hand is 'resized'; one by the scaling rule is 'scaled' (the same data, with the rule's reason).
HISTORY_EVENT_KINDS = (LeaseEvent.Kind.RESIZED, LeaseEvent.Kind.SCALED)


def held_cards_series(*, lease: Lease, since: datetime, until: datetime) -> list[dict]:
    """How many cards `lease` held over [since, until), as steps: a point at `since`, one at each moment the count
    changed, and one at `until` (the count then), each `{"t", "gpus"}` meaning "from t on, gpus cards"."""
    changes: dict[datetime, int] = defaultdict(int)
    held_at_since = 0
    for (period,) in lease.allocations.filter(period__overlap=period_range(since, until)).values_list("period"):
        lower, upper = period.lower, period.upper
        if lower <= since:
            held_at_since += 1
        else:
            changes[lower] += 1
        if upper is not None and upper < until:
            changes[upper] -= 1
    points = [{"t": since, "gpus": held_at_since}]
    count = held_at_since
    for moment in sorted(changes):
        if changes[moment] == 0:  # a card replaced by another at the same instant
            continue
        count += changes[moment]
        points.append({"t": moment, "gpus": count})
    points.append({"t": until, "gpus": count})
    return points


def mean_utilization_series(telemetry: dict) -> list[dict]:
    """Per time bucket of a `lease_telemetry` answer: the mean utilisation over the cards that reported in it,
    and how many did."""
    buckets: dict[str, list[float]] = defaultdict(list)
    for gpu in telemetry["gpus"]:
        for point in gpu["points"]:
            value = point.get("utilization_pct")
            if value is not None:
                buckets[point["t"]].append(float(value))
    return [
        {"t": t, "utilization_pct": round(sum(values) / len(values), 2), "cards": len(values)}
        for t, values in sorted(buckets.items(), key=lambda item: datetime.fromisoformat(item[0]))
    ]


def scaling_steps(*, lease: Lease, since: datetime, until: datetime) -> list[dict]:
    """The lease's resizes in [since, until): who moved it (`by`: "rule" for a scaled event, else "customer"),
    from and to how many cards, and the rule's reason where it gave one."""
    steps = []
    events = lease.events.filter(kind__in=HISTORY_EVENT_KINDS, at__gte=since, at__lt=until).order_by("at", "id")
    for event in events:
        data = event.data or {}
        before, after = data.get("from_count"), data.get("to_count")
        if not isinstance(before, int) or not isinstance(after, int):
            continue
        steps.append(
            {
                "t": event.at,
                "from_gpus": before,
                "to_gpus": after,
                "by": "rule" if event.kind == LeaseEvent.Kind.SCALED else "customer",
                "reason": str(data.get("reason") or ""),
            }
        )
    return steps


def lease_scaling_history(
    *,
    lease: Lease,
    since: datetime | None = None,
    until: datetime | None = None,
    step: int | None = None,
    now: datetime | None = None,
) -> dict:
    """The chart of `lease` over [since, until) (default: the last hour it ran): cards held (steps), the mean
    utilisation of the held cards at `step` seconds, and the scaling steps. A bad range is InvalidInput (400)."""
    now = now or timezone.now()
    until = until or min(now, lease.ended_at or now)
    since = since or until - timedelta(hours=1)
    step = chart_step(since=since, until=until, step=step)
    telemetry = lease_telemetry(lease=lease, since=since, until=until, step=step, now=now)
    return {
        "lease": lease.pk,
        "since": since,
        "until": until,
        "step": step,
        "source": telemetry["source"],
        "gpus": held_cards_series(lease=lease, since=since, until=until),
        "utilization": mean_utilization_series(telemetry),
        "steps": scaling_steps(lease=lease, since=since, until=until),
    }
