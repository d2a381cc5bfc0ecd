"""Reads for an elastic lease's chart: the cards it held over time (a step series from its allocations' periods)
beside the mean utilisation of the cards it held (from the agents' telemetry), and its scaling steps (its 'scaled'
and 'resized' events). The lease page (marketplace/views_scaling.py) draws it from
`GET /api/v1/leases/{id}/scaling/history/`.

Tenant-safe as `scheduler.selectors.lease_telemetry` is: only the lease's own cards, each only over the time the lease
held it, roll-up buckets only when they lie wholly inside that time; but one query for the mean over all its windows
(a lease resized often holds many), where the per-card series takes one per window.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from django.db import connections
from django.utils import timezone

from accounts.databases import read_alias
from inventory import telemetry
from inventory.selectors import chart_step
from scheduler.models import Lease, LeaseEvent
from scheduler.selectors import BUCKETS, _ceil, _floor, own_time, period_range, resold_periods

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


def held_windows(
    *, lease: Lease, since: datetime, until: datetime, bucket: timedelta | None
) -> list[tuple[int, datetime, datetime]]:
    """(card, from, to) for each time `lease` held a card within [since, until): trimmed at the lease's own edges to
    whole `bucket`s when the figures come from roll-ups, as `lease_telemetry` trims them, so a bucket shared with
    the card's tenant before or after is never read."""
    windows = []
    rows = list(
        lease.allocations.filter(period__overlap=period_range(since, until)).values_list("pk", "gpu_id", "period")
    )
    # A contract's card resold to a renter is the renter's for that time (selectors.resold_periods).
    resold = resold_periods([pk for pk, _gpu, _period in rows], since, until)
    for pk, gpu_id, period in rows:
        for start, end in own_time(period.lower, period.upper, resold.get(pk, [])):
            low, high = max(since, start), min(until, end) if end else until
            if bucket is not None:
                low = _ceil(low, bucket) if low == start else low
                high = _floor(high, bucket) if high == end else high
            if low < high:
                windows.append((gpu_id, low, high))
    return windows


def mean_utilization(*, lease: Lease, since: datetime, until: datetime, step: int, now: datetime) -> tuple[str, list]:
    """The mean utilisation of the cards `lease` held, per bucket of `step` seconds over [since, until): each card's
    average in the bucket (only over the time the lease held it), then the mean over the cards that reported, and
    how many did. One query over all the held windows, from the table that fits the step (the replica's when there
    is one, as every chart). Returns the source's name and the points."""
    source = telemetry.choose_source(step, since, now)
    windows = held_windows(lease=lease, since=since, until=until, bucket=BUCKETS.get(source))
    name = source.removeprefix("inventory_gpusample").lstrip("_") or "raw"
    if not windows:
        return name, []
    column = "ts" if source == telemetry.RAW else "bucket"
    query = (
        "SELECT t, avg(card), count(*) FROM ("  # noqa: S608 (our own table and column names)
        f"SELECT s.gpu_id, date_bin(make_interval(secs => %(step)s), s.{column}, %(origin)s) AS t, "
        f"avg(s.utilization_pct) AS card FROM {source} s "
        "JOIN unnest(%(gpus)s::bigint[], %(lows)s::timestamptz[], %(highs)s::timestamptz[]) AS w(gpu_id, low, high) "
        f"ON s.gpu_id = w.gpu_id AND s.{column} >= w.low AND s.{column} < w.high "
        f"WHERE s.{column} >= %(floor)s AND s.{column} < %(ceiling)s AND s.utilization_pct IS NOT NULL "
        "GROUP BY s.gpu_id, t) per_card GROUP BY t ORDER BY t"
    )
    params = {
        "step": step,
        "origin": datetime(2000, 1, 1, tzinfo=UTC),
        "gpus": [gpu for gpu, _, _ in windows],
        "lows": [low for _, low, _ in windows],
        "highs": [high for _, _, high in windows],
        "floor": min(low for _, low, _ in windows),
        "ceiling": max(high for _, _, high in windows),
    }
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(query, params)
        rows = cursor.fetchall()
    return name, [{"t": t.isoformat(), "utilization_pct": round(mean, 2), "cards": cards} for t, mean, cards in rows]


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
    source, utilization = mean_utilization(lease=lease, since=since, until=until, step=step, now=now)
    return {
        "lease": lease.pk,
        "since": since,
        "until": until,
        "step": step,
        "source": source,
        "gpus": held_cards_series(lease=lease, since=since, until=until),
        "utilization": utilization,
        "steps": scaling_steps(lease=lease, since=since, until=until),
    }
