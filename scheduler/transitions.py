"""How a lease's rows change, for every writer of the scheduler (placement, the lease verbs, the lifecycle jobs).

`move` is the one writer of `Lease.state` (a conditional UPDATE from the allowed source states), `append_event`
the only writer of the event log (`insert_with_event` writes a new lease's first event with its row),
`close_allocations` ends a lease's hold on its cards at an instant; `start` and `finish_preemption` are the two moves
made both by a request and by the periodic job.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.contrib.postgres.fields import DateTimeRangeField
from django.db import connections, router
from django.db.models import ExpressionWrapper, F, Func, Q, QuerySet, Sum, Value
from django.db.models.sql import InsertQuery

from inventory.models import Gpu
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, sources_of


def append_event(lease: Lease, at: datetime, kind: str, **data: Any) -> LeaseEvent:
    """Append one event to the lease's log (the only way events are written: never updated, never deleted)."""
    return LeaseEvent.objects.create(lease=lease, at=at, kind=kind, data=data)


def insert_with_event(lease: Lease, at: datetime, kind: str, **data: Any) -> None:
    """Insert the new `lease`'s row (all its fields as they stand, its `pk` set from the insert) and its first event
    in one statement, a data-modifying CTE: one round trip where `save` and `append_event` take two. The event row is
    what `append_event(lease, at, kind, **data)` would write."""
    using = router.db_for_write(Lease, instance=lease)
    connection = connections[using]
    lease_fields = [field for field in Lease._meta.concrete_fields if not field.primary_key]
    insert = InsertQuery(Lease)
    insert.insert_values(lease_fields, [lease])
    compiler = insert.get_compiler(using=using)
    compiler.returning_fields = [Lease._meta.pk]
    ((lease_sql, lease_params),) = compiler.as_sql()
    event = LeaseEvent(at=at, kind=kind, data=data)
    event_fields = [LeaseEvent._meta.get_field(name) for name in ("at", "kind", "data")]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in [LeaseEvent._meta.get_field("lease"), *event_fields])
    event_params = [field.get_db_prep_save(field.pre_save(event, True), connection) for field in event_fields]
    values = ", ".join(["%s"] * len(event_fields))
    # Names from the models' metadata and the ORM's own compiled INSERT; every value is a parameter.
    sql = (
        f"WITH new_lease AS ({lease_sql}) INSERT INTO {quote(LeaseEvent._meta.db_table)} ({columns}) "  # noqa: S608
        f"SELECT new_lease.{quote(Lease._meta.pk.column)}, {values} FROM new_lease RETURNING {quote('lease_id')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*lease_params, *event_params])
        lease.pk = cursor.fetchone()[0]
    lease._state.adding = False
    lease._state.db = using


def move(lease: Lease, target: str, *, only_from: Iterable[str] | None = None, **fields: Any) -> bool:
    """The one writer of `Lease.state`: a conditional UPDATE from the states allowed to reach `target` (narrowed
    to `only_from` when given: a reservation starting and a stopped lease starting again both become `active`,
    and neither may be taken for the other).

    Returns False (and changes nothing) when the lease is no longer in such a state, so racing runners of the
    same move cannot both apply it.
    """
    sources = sources_of(target)
    if only_from is not None:
        sources = [state for state in sources if state in set(only_from)]
    changed = Lease.objects.filter(pk=lease.pk, state__in=sources).update(state=target, **fields)
    if changed:
        lease.state = target
        for name, value in fields.items():
            setattr(lease, name, value)
    return bool(changed)


def start(lease: Lease, *, now: datetime) -> bool:
    """A reservation whose start has come becomes active (once, however many callers race)."""
    if move(lease, LeaseState.ACTIVE, only_from=[LeaseState.SCHEDULED]):
        append_event(lease, now, LeaseEvent.Kind.STARTED)
        return True
    return False


def finish_preemption(lease: Lease, *, now: datetime) -> bool:
    """An interruptible lease whose notice ran out becomes `preempted` at its `preempt_at` (once)."""
    if move(lease, LeaseState.PREEMPTED, ended_at=lease.preempt_at or now, end_reason="preempted"):
        append_event(lease, now, LeaseEvent.Kind.PREEMPTED, effective_at=(lease.preempt_at or now).isoformat())
        return True
    return False


def close_allocations(allocations: QuerySet[Allocation], *, at: datetime, reason: str) -> list[int]:
    """Close every allocation of `allocations` still held at `at`: periods end at `at`; allocations that had not
    started by `at` are removed (they never held the card). Returns the card ids released.

    The rows are locked first (primary-key order), so a resale being placed on one of them (scheduler/resale.py
    locks the backing allocations) either finishes first or then finds it closed; their resales (allocations with
    `backing` on them) close at the same instant, before them, as the containment trigger wants (reason
    "backing_ended"; resale.follow_backing ends the leases left without cards)."""
    held = Q(period__endswith__isnull=True) | Q(period__endswith__gt=at)
    rows = list(
        allocations.filter(held).order_by("pk").select_for_update(no_key=True, of=("self",)).values_list("pk", "gpu_id")
    )
    if not rows:
        return []
    ids = [pk for pk, _gpu in rows]
    released = [gpu for _pk, gpu in rows]
    resold = Allocation.objects.filter(backing_id__in=ids).filter(held)
    if resold.exists():
        close_allocations(resold, at=at, reason="backing_ended")
    live = Allocation.objects.filter(pk__in=ids)
    live.filter(period__startswith__gte=at).delete()
    closed = Func(F("period__startswith"), Value(at), Value("[)"), function="tstzrange")
    live.filter(period__startswith__lt=at).update(
        period=ExpressionWrapper(closed, output_field=DateTimeRangeField()), close_reason=reason
    )
    return released


def gpu_uuids(gpu_ids: Iterable[int]) -> list[str]:
    """The cards' uuids in primary-key order, as the event log names them."""
    return list(Gpu.objects.filter(pk__in=list(gpu_ids)).order_by("pk").values_list("uuid", flat=True))


def rated_pflops(gpu_ids: Iterable[int]) -> Decimal:
    """The rated dense FP16 PFLOPS of these cards together (what a lease delivers)."""
    total = Gpu.objects.filter(pk__in=list(gpu_ids)).aggregate(t=Sum("server__gpu_model__fp16_tflops"))["t"]
    return pflops_of(Decimal(total or 0))


def pflops_of(tflops: Decimal) -> Decimal:
    """Summed card TFLOPS as the rated PFLOPS a lease delivers (three decimals)."""
    return (tflops / 1000).quantize(Decimal("0.001"))
