"""The life of leases after they are made: the periodic job (`leases_run`, beat every 30 s and
`manage.py run_leases`) starts due reservations, ends expired leases, completes preemptions whose notice ran out,
and fails leases over from failed cards and unreachable servers (`failover_run`). Every step is idempotent and
safe to run concurrently: each lease moves by a conditional UPDATE, each piece of work in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from inventory.models import Gpu, GpuHealthEvent, Server
from scheduler import resale
from scheduler.errors import NoCapacity
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan
from scheduler.placement import Demand, allocate
from scheduler.selectors import Filters
from scheduler.transitions import append_event, close_allocations, finish_preemption, gpu_uuids, move, start

# Leases each step takes per run; the next run takes the rest.
BATCH = 1000


def _each_in_a_transaction(leases: QuerySet[Lease], step: Callable[[Lease], bool]) -> int:
    """Apply `step` to the first BATCH of `leases`, each in its own transaction; count the leases it moved."""
    moved = 0
    for lease in leases[:BATCH]:
        with transaction.atomic():
            moved += step(lease)
    return moved


def leases_start_due(*, now: datetime | None = None) -> int:
    """Reservations whose start has come become active. Idempotent (conditional UPDATE per lease)."""
    now = now or timezone.now()
    due = Lease.objects.filter(state=LeaseState.SCHEDULED, start_at__lte=now).order_by("start_at", "pk")
    return _each_in_a_transaction(due, lambda lease: start(lease, now=now))


def leases_end_due(*, now: datetime | None = None) -> int:
    """Active and stopped leases past their `end_at` end (their periods already end there; a stopped lease holds
    none). Idempotent."""
    now = now or timezone.now()

    def end(lease: Lease) -> bool:
        if not move(lease, LeaseState.ENDED, ended_at=lease.end_at, end_reason="expired"):
            return False
        close_allocations(Allocation.objects.filter(lease=lease), at=lease.end_at, reason="ended")
        append_event(lease, now, LeaseEvent.Kind.ENDED, reason="end_at")
        return True

    due = Lease.objects.filter(state__in=[LeaseState.ACTIVE, LeaseState.STOPPED], end_at__lte=now)
    due = due.order_by("end_at", "pk")
    return _each_in_a_transaction(due, end)


def preemptions_complete(*, now: datetime | None = None) -> int:
    """Interruptible leases whose preemption notice ran out become `preempted`. Idempotent."""
    now = now or timezone.now()
    due = Lease.objects.filter(
        state__in=[LeaseState.SCHEDULED, LeaseState.ACTIVE], preempt_at__isnull=False, preempt_at__lte=now
    )
    return _each_in_a_transaction(due.order_by("pk"), lambda lease: finish_preemption(lease, now=now))


def leases_run(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job (beat every 30 s, `manage.py run_leases`): start due reservations, end expired leases,
    finish preemptions, fail over leases on failed cards or unreachable servers. Safe to run concurrently."""
    now = now or timezone.now()
    return {
        "started": leases_start_due(now=now),
        "ended": leases_end_due(now=now),
        "preempted": preemptions_complete(now=now),
        **failover_run(now=now),
        "resales_ended": resale.resale_orphans_end(now=now),
        "capacity_refreshed": capacity_refresh(),
    }


def capacity_refresh() -> int:
    """Recount the capacity rows (scheduler.models.Capacity) that an allocation's start or end has made stale since
    they were counted; returns how many. Readers never depend on it (they count a stale server live); it keeps the
    live counts few."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT scheduler_capacity_refresh()")
        return cursor.fetchone()[0]


# --- failover ----------------------------------------------------------------------------------------------


def _replace_card(allocation: Allocation, *, now: datetime, reason: str) -> bool | None:
    """Move `allocation`'s lease off its card: close it now and allocate a healthy free card of the same model
    (same server first). With none free, record the shortfall. Returns whether a replacement was found (None when
    there was nothing left to move: a resale allocation its backing's failover already moved).

    The resales of `allocation` (scheduler/resale.py) follow it: each gets another free card of its contract on
    that server, the new one included, or a shortfall. A resale allocation itself moves only within its contract's
    cards."""
    lease = Lease.objects.select_for_update().get(pk=allocation.lease_id)
    if allocation.backing_id is not None:
        return _replace_resale_card(allocation, lease, now=now, reason=reason)
    gpu = Gpu.objects.select_related("server").get(pk=allocation.gpu_id)
    end = allocation.period.upper
    resold = list(_live_resales_of(allocation, now))
    close_allocations(Allocation.objects.filter(pk=allocation.pk), at=now, reason="failover")
    replaced = _replace_own_card(allocation, lease, gpu, end, now=now, reason=reason)
    for row in resold:
        _replace_resale_card(row, Lease.objects.select_for_update().get(pk=row.lease_id), now=now, reason=reason)
    return replaced


def _live_resales_of(allocation: Allocation, now: datetime) -> QuerySet[Allocation]:
    return Allocation.objects.filter(backing=allocation).filter(
        Q(period__endswith__isnull=True) | Q(period__endswith__gt=now)
    )


def _replace_resale_card(allocation: Allocation, lease: Lease, *, now: datetime, reason: str) -> bool | None:
    """A resale allocation (its backing's card failed or moved): another free card of its contract on that server,
    at the same price, else a shortfall. None when its lease no longer lives or it was moved already."""
    if lease.state not in (LeaseState.SCHEDULED, LeaseState.ACTIVE):
        return None
    current = Allocation.objects.get(pk=allocation.pk)
    if (current.period.upper is not None and current.period.upper < now) or current.close_reason == "failover":
        return None
    close_allocations(Allocation.objects.filter(pk=allocation.pk), at=now, reason="failover")
    Allocation.objects.filter(pk=allocation.pk).update(close_reason="failover")
    gpu = Gpu.objects.select_related("server__gpu_model").get(pk=allocation.gpu_id)
    try:
        with transaction.atomic():
            rows = resale.allocate_resale(
                lease=lease,
                count=1,
                start=max(now, allocation.period.lower),
                end=allocation.period.upper or lease.end_at,
                now=now,
                price_like=allocation,
                listed_only=False,
            )
    except NoCapacity:
        _record_shortfall(lease, gpu, now=now, reason=reason)
        return False
    to_gpu = gpu_uuids([rows[0].gpu_id])[0]
    append_event(lease, now, LeaseEvent.Kind.FAILOVER, from_gpu=gpu.uuid, to_gpu=to_gpu, reason=reason)
    return True


def _replace_own_card(
    allocation: Allocation, lease: Lease, gpu: Gpu, end: datetime | None, *, now: datetime, reason: str
) -> bool:
    filters = Filters(
        plan=lease.plan,
        interruptible=lease.interruptible,
        until=end,
        gpu_model_id=gpu.server.gpu_model_id,
        region=lease.region,
        runtime=lease.runtime,
        host_access=lease.host_access,
    )
    try:
        with transaction.atomic():
            rows = allocate(
                lease=lease,
                demand=Demand(plan=Plan.CARD_HOUR, gpu_count=1),
                filters=filters,
                start=max(now, allocation.period.lower),
                end=end,
                now=now,
                prefer_servers={gpu.server_id},
                price_like=allocation,
            )
    except NoCapacity:
        _record_shortfall(lease, gpu, now=now, reason=reason)
        return False
    to_gpu = gpu_uuids([rows[0].gpu_id])[0]
    append_event(lease, now, LeaseEvent.Kind.FAILOVER, from_gpu=gpu.uuid, to_gpu=to_gpu, reason=reason)
    return True


def _record_shortfall(lease: Lease, gpu: Gpu, *, now: datetime, reason: str) -> None:
    """The lease lost `gpu` with no card to replace it: count it (and its PFLOPS, for a capacity contract)."""
    lost = (gpu.server.gpu_model.fp16_tflops / 1000).quantize(Decimal("0.001"))
    Lease.objects.filter(pk=lease.pk).update(
        shortfall_gpus=F("shortfall_gpus") + 1,
        delivered_pflops=F("delivered_pflops") - (lost if lease.plan == Plan.PFLOPS_YEAR else 0),
    )
    append_event(lease, now, LeaseEvent.Kind.SHORTFALL, gpu=gpu.uuid, reason=reason, lost_pflops=str(lost))


def _live_allocations_on(gpu_ids: Iterable[int], now: datetime) -> QuerySet[Allocation]:
    return Allocation.objects.filter(
        gpu_id__in=list(gpu_ids),
        lease__state__in=[LeaseState.SCHEDULED, LeaseState.ACTIVE],
    ).filter(Q(period__endswith__isnull=True) | Q(period__endswith__gt=now))


def failover_run(*, now: datetime | None = None, batch: int = 500) -> dict[str, int]:
    """Consume unhandled `failed` health events (oldest first) and unreachable servers: every lease holding such a
    card gets a replacement or a recorded shortfall. Each event is handled in one transaction with its moves and
    marked handled there (claimed with SKIP LOCKED, so concurrent runs split the work). Idempotent."""
    now = now or timezone.now()
    outcomes: list[bool] = []
    pending = GpuHealthEvent.objects.filter(handled_at__isnull=True).order_by("id").values_list("pk", flat=True)
    for event_id in list(pending[:batch]):
        with transaction.atomic():
            event = (
                GpuHealthEvent.objects.select_for_update(skip_locked=True)
                .filter(pk=event_id, handled_at__isnull=True)
                .first()
            )
            if event is None:
                continue
            if event.to_health == Gpu.Health.FAILED:
                for allocation in _live_allocations_on([event.gpu_id], now).order_by("pk"):
                    outcomes.append(_replace_card(allocation, now=now, reason=f"card failed: {event.reason}"[:200]))
            GpuHealthEvent.objects.filter(pk=event.pk).update(handled_at=now)
    unreachable = Gpu.objects.filter(server__status=Server.Status.UNREACHABLE).values_list("pk", flat=True)
    for allocation_id in list(_live_allocations_on(unreachable, now).order_by("pk").values_list("pk", flat=True)):
        with transaction.atomic():
            claimed = (
                _live_allocations_on(unreachable, now)
                .select_for_update(skip_locked=True, of=("self",))
                .filter(pk=allocation_id)
                .first()
            )
            if claimed is None:
                continue
            outcomes.append(_replace_card(claimed, now=now, reason="server unreachable"))
    return {"replaced": outcomes.count(True), "shortfalls": outcomes.count(False)}
