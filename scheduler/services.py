"""Every write of the scheduler: create, resize and end leases, run their life, preempt, fail over.

Allocation (`_allocate`): measure free capacity per server, let the pure allocator place the request, then claim
that many cards per server under `FOR NO KEY UPDATE SKIP LOCKED` inside a savepoint (scheduler/locks.py). A server
that comes up short is re-measured and the request placed again; a request short only because of locked cards
waits once for them; an exclusion-constraint violation rolls the savepoint back and is retried. Whatever fails
in the end is `NoCapacity` (409) and the whole transaction rolls back: nothing is held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.postgres.fields import DateTimeRangeField
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Exists, ExpressionWrapper, F, Func, Q, QuerySet, Sum, Value
from django.utils import timezone

from accounts.errors import InvalidInput, InvalidTransition, NotAllowed
from accounts.models import Organization
from accounts.tenancy import platform_work
from inventory.models import Gpu, GpuHealthEvent, GpuModel, Offer, Server
from scheduler import allocator, locks, pricing, selectors
from scheduler.errors import NoCapacity
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan, check_transition, sources_of
from scheduler.selectors import Filters, period_range

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "the scheduler places and changes leases on any provider's cards"

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Placement rounds per request: each round re-measures the servers that came up short.
MAX_ROUNDS = 64
# Whole-transaction attempts after a deadlock (PostgreSQL aborts one side; we run it again).
MAX_ATTEMPTS = 4


@dataclass(frozen=True)
class Demand:
    plan: str
    gpu_count: int = 0
    servers: int = 0
    pflops: Decimal | None = None
    mix_models: bool = False


def _place(demand: Demand, capacity: Iterable[allocator.ServerCapacity]) -> allocator.Placement | None:
    if demand.plan == Plan.CARD_HOUR:
        return allocator.place_cards(capacity, demand.gpu_count)
    if demand.plan == Plan.SERVER_MONTH:
        return allocator.place_servers(capacity, demand.servers)
    assert demand.pflops is not None  # noqa: S101 - validated by the caller
    return allocator.place_pflops(capacity, demand.pflops, mix_models=demand.mix_models)


def _is_deadlock(exc: BaseException) -> bool:
    return getattr(exc.__cause__, "sqlstate", None) in ("40P01", "40001")


def _retrying(work: Callable[[], T]) -> T:
    """Run `work` in its own transaction, again after a deadlock; a last deadlock is answered `no_capacity`."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            with transaction.atomic():
                return work()
        except OperationalError as exc:
            if not _is_deadlock(exc):
                raise
            logger.info("scheduler: deadlock, attempt %s of %s", attempt + 1, MAX_ATTEMPTS)
    raise NoCapacity("The cards are busy right now; try again.")


def _event(lease: Lease, at: datetime, kind: str, **data: Any) -> LeaseEvent:
    """Append one event to the lease's log (the only way events are written: never updated, never deleted)."""
    return LeaseEvent.objects.create(lease=lease, at=at, kind=kind, data=data)


def _transition(lease: Lease, target: str, **fields: Any) -> bool:
    """The one writer of `Lease.state`: a conditional UPDATE from the states allowed to reach `target`.

    Returns False (and changes nothing) when the lease is no longer in such a state, so racing runners of the
    same move cannot both apply it.
    """
    changed = Lease.objects.filter(pk=lease.pk, state__in=sources_of(target)).update(state=target, **fields)
    if changed:
        lease.state = target
        for name, value in fields.items():
            setattr(lease, name, value)
    return bool(changed)


def _uuids(gpu_ids: Iterable[int]) -> list[str]:
    return list(Gpu.objects.filter(pk__in=list(gpu_ids)).order_by("pk").values_list("uuid", flat=True))


def _rated_pflops(gpu_ids: Iterable[int]) -> Decimal:
    total = Gpu.objects.filter(pk__in=list(gpu_ids)).aggregate(t=Sum("server__gpu_model__fp16_tflops"))["t"]
    return (Decimal(total or 0) / 1000).quantize(Decimal("0.001"))


# --- allocation --------------------------------------------------------------------------------------------


def _capacity(filters: Filters, period, held: set[int]) -> dict[int, allocator.ServerCapacity]:
    return {c.server_id: c for c in selectors.free_capacity(filters, period, held=held)}


def _servers_held(lease: Lease, now: datetime) -> set[int]:
    """Servers where `lease` holds cards from `now` on (an offer's minimum is met there already)."""
    if lease.pk is None:
        return set()
    return set(
        Allocation.objects.filter(lease=lease, period__overlap=period_range(now, None))
        .values_list("server_id", flat=True)
        .distinct()
    )


def _allocate(
    *,
    lease: Lease,
    demand: Demand,
    filters: Filters,
    start: datetime,
    end: datetime | None,
    now: datetime,
    prefer_servers: set[int] | None = None,
    preempt: bool = False,
    price_like: Allocation | None = None,
) -> list[Allocation]:
    """Allocate `demand` to `lease` for [start, end), all or nothing; call inside a transaction.

    Locks the chosen card rows (`FOR NO KEY UPDATE`, skip locked, then at most one blocking wait in primary-key
    order) before inserting the allocations. Raises NoCapacity when the demand cannot be met in full; the caller's
    transaction then rolls back, so nothing is held. New rows are priced from the lease's price book
    (scheduler/pricing.py), or like `price_like` (a failover replacement keeps the price of the card it replaces).
    """
    period = period_range(start, end)
    held = _servers_held(lease, now)
    capacity = _capacity(filters, period, held)
    contended: set[int] = set()
    waited = False
    for _ in range(MAX_ROUNDS):
        placement = None
        if prefer_servers:
            placement = _place(demand, [c for c in capacity.values() if c.server_id in prefer_servers])
        if placement is None:
            placement = _place(demand, capacity.values())
        if placement is None:
            if contended and not waited:
                locks.wait_for_cards(server_ids=contended, period=period, filters=filters)
                waited = True
                contended.clear()
                capacity = _capacity(filters, period, held)
                continue
            if preempt:
                return _allocate_preempting(
                    lease=lease, demand=demand, filters=filters, start=start, end=end, now=now, price_like=price_like
                )
            raise NoCapacity()
        savepoint = transaction.savepoint()
        claimed: dict[int, list[int]] = {}
        short: dict[int, int] = {}
        for server_id, count in sorted(placement.items()):
            ids = locks.claim_free_cards(server_id=server_id, count=count, period=period, filters=filters)
            if len(ids) < count:
                short[server_id] = len(ids)
                break
            claimed[server_id] = ids
        if short:
            transaction.savepoint_rollback(savepoint)
            for server_id, got in short.items():
                capacity[server_id] = replace(capacity[server_id], free=got)
                contended.add(server_id)
            continue
        rows = [
            Allocation(lease=lease, gpu_id=gpu_id, server_id=server_id, period=period)
            for server_id, ids in claimed.items()
            for gpu_id in ids
        ]
        _price(lease, rows, price_like)
        try:
            with transaction.atomic():
                Allocation.objects.bulk_create(rows)
        except IntegrityError:
            # A card allocated by a transaction that committed between our snapshot and our lock.
            transaction.savepoint_rollback(savepoint)
            capacity = _capacity(filters, period, held)
            continue
        transaction.savepoint_commit(savepoint)
        return rows
    raise NoCapacity()


def _price(lease: Lease, rows: list[Allocation], like: Allocation | None) -> None:
    if like is None:
        pricing.price_allocations(lease, rows)
        return
    for row in rows:
        row.unit_price, row.units = like.unit_price, like.units


def preemption_notice() -> timedelta:
    return timedelta(seconds=settings.SUANLI_PREEMPTION_NOTICE_SECONDS)


def _by_interruptible_only(period) -> Q:
    """Cards whose overlapping allocations (if any) all belong to live interruptible leases."""
    firm = selectors.overlapping(period).filter(
        Q(lease__interruptible=False) | ~Q(lease__state__in=[LeaseState.SCHEDULED, LeaseState.ACTIVE])
    )
    return ~Q(Exists(firm))


def _allocate_preempting(
    *,
    lease: Lease,
    demand: Demand,
    filters: Filters,
    start: datetime,
    end: datetime | None,
    now: datetime,
    price_like: Allocation | None = None,
) -> list[Allocation]:
    """An on-demand request the free cards cannot meet: count cards held by interruptible leases as free too.

    Notice semantics: each interruptible lease that loses a card gets a `preemption_notice` event now and keeps
    all its cards until `cut` = max(start, now + SUANLI_PREEMPTION_NOTICE_SECONDS); its allocations are closed
    at `cut` and the on-demand lease holds those cards from `cut` (its free cards from `start`). The interruptible
    lease becomes `preempted` at `cut` (at once when the notice is 0, else by run_leases). On-demand leases are
    never touched: a card any on-demand allocation overlaps is not a candidate.
    """
    period = period_range(start, end)
    cut = max(start, now + preemption_notice())
    candidates = selectors.allocatable_gpus(filters).filter(_by_interruptible_only(period))
    capacity = selectors.capacity_of(candidates, held=_servers_held(lease, now))
    placement = _place(demand, capacity)
    if placement is None:
        raise NoCapacity()
    claimed: list[tuple[int, int]] = []
    for server_id, count in sorted(placement.items()):
        # Free cards first, then the ones an interruptible lease holds.
        ids = list(
            candidates.filter(server_id=server_id)
            .order_by(Exists(selectors.overlapping(period)).asc(), "pk")
            .select_for_update(no_key=True, skip_locked=True, of=("self",))
            .values_list("pk", flat=True)[:count]
        )
        if len(ids) < count:
            raise NoCapacity()
        claimed += [(server_id, gpu_id) for gpu_id in ids]
    gpu_ids = [gpu_id for _, gpu_id in claimed]
    victim_ids = sorted(
        set(Allocation.objects.filter(gpu_id__in=gpu_ids, period__overlap=period).values_list("lease_id", flat=True))
    )
    victim_cards = set(
        Allocation.objects.filter(gpu_id__in=gpu_ids, period__overlap=period).values_list("gpu_id", flat=True)
    )
    for victim in Lease.objects.filter(pk__in=victim_ids).order_by("pk").select_for_update():
        _preempt(victim, cut=cut, now=now)
    allocations = [
        Allocation(
            lease=lease,
            gpu_id=gpu_id,
            server_id=server_id,
            period=period_range(cut if gpu_id in victim_cards else start, end),
        )
        for server_id, gpu_id in claimed
    ]
    _price(lease, allocations, price_like)
    try:
        with transaction.atomic():
            Allocation.objects.bulk_create(allocations)
    except IntegrityError:
        raise NoCapacity() from None
    return allocations


def _preempt(victim: Lease, *, cut: datetime, now: datetime) -> None:
    if victim.state not in (LeaseState.SCHEDULED, LeaseState.ACTIVE) or not victim.interruptible:
        raise NoCapacity()  # pragma: no cover - excluded by the candidate query
    check_transition(victim.state, LeaseState.PREEMPTED)
    released = _close_allocations(Allocation.objects.filter(lease=victim), at=cut, reason="preempted")
    Lease.objects.filter(pk=victim.pk).update(preempt_at=cut)
    victim.preempt_at = cut
    _event(victim, now, LeaseEvent.Kind.PREEMPTION_NOTICE, effective_at=cut.isoformat(), gpus=_uuids(released))
    if cut <= now:
        _finish_preemption(victim, now=now)


def _finish_preemption(lease: Lease, *, now: datetime) -> bool:
    if _transition(lease, LeaseState.PREEMPTED, ended_at=lease.preempt_at or now):
        _event(lease, now, LeaseEvent.Kind.PREEMPTED, effective_at=(lease.preempt_at or now).isoformat())
        return True
    return False


def _close_allocations(allocations: QuerySet[Allocation], *, at: datetime, reason: str) -> list[int]:
    """Close every allocation of `allocations` still held at `at`: periods end at `at`; allocations that had not
    started by `at` are removed (they never held the card). Returns the card ids released."""
    live = allocations.filter(Q(period__endswith__isnull=True) | Q(period__endswith__gt=at))
    released = list(live.values_list("gpu_id", flat=True))
    live.filter(period__startswith__gte=at).delete()
    closed = Func(F("period__startswith"), Value(at), Value("[)"), function="tstzrange")
    live.filter(period__startswith__lt=at).update(
        period=ExpressionWrapper(closed, output_field=DateTimeRangeField()), close_reason=reason
    )
    return released


# --- leases ------------------------------------------------------------------------------------------------


@platform_work(_PLATFORM)
def largest_allocatable(*, plan: str, filters: Filters) -> Decimal | int:
    totals = selectors.allocatable_totals(filters)
    if plan == Plan.CARD_HOUR:
        return totals["cards"]
    if plan == Plan.SERVER_MONTH:
        return totals["servers"]
    return (Decimal(totals["tflops"]) / 1000).quantize(Decimal("0.001"))


@platform_work(_PLATFORM)
def lease_create(
    *,
    org: Organization,
    plan: str,
    gpu_count: int | None = None,
    servers: int | None = None,
    pflops: Decimal | None = None,
    gpu_model: GpuModel | None = None,
    region: str = "",
    server: Server | None = None,
    offer: Offer | None = None,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    interruptible: bool = False,
    runtime: str = "",
    host_access: bool = False,
    now: datetime | None = None,
) -> Lease:
    """Create a lease and allocate all its cards for [start, end), or raise NoCapacity holding nothing.

    A start in the future makes a reservation (`scheduled`) that holds its cards for its time range. Locks the
    chosen card rows (see `_allocate`); retried after a deadlock. Not idempotent by itself: the API makes it so
    with `Idempotency-Key`.
    """
    now = now or timezone.now()
    if org.billing_hold:
        raise NotAllowed("Your organisation has an overdue invoice; pay it to start new leases.", code="billing_hold")
    start = start_at if start_at and start_at > now else now
    if offer is not None:
        server = offer.server
    filters = Filters(
        plan=plan,
        interruptible=interruptible,
        until=end_at,
        gpu_count=gpu_count if plan == Plan.CARD_HOUR else None,
        gpu_model_id=gpu_model.pk if gpu_model else None,
        region=region or "",
        server_id=server.pk if server else None,
        runtime=runtime,
        host_access=host_access,
    )
    demand = Demand(
        plan=plan, gpu_count=gpu_count or 0, servers=servers or 0, pflops=pflops, mix_models=gpu_model is None
    )
    wanted: Decimal | int = {Plan.CARD_HOUR: demand.gpu_count, Plan.SERVER_MONTH: demand.servers}.get(
        plan, pflops or Decimal(0)
    )

    def work() -> Lease:
        lease = Lease.objects.create(
            organization=org,
            plan=plan,
            state=LeaseState.SCHEDULED if start > now else LeaseState.ACTIVE,
            interruptible=interruptible,
            gpu_model=gpu_model,
            region=region or "",
            server=server,
            offer=offer,
            currency=org.currency,
            unit_price=0,
            gpu_count=demand.gpu_count,
            servers=servers if plan == Plan.SERVER_MONTH else None,
            pflops=pflops if plan == Plan.PFLOPS_YEAR else None,
            start_at=start,
            end_at=end_at,
            runtime=runtime,
            host_access=host_access,
        )
        rows = _allocate(
            lease=lease, demand=demand, filters=filters, start=start, end=end_at, now=now, preempt=not interruptible
        )
        gpu_ids = [row.gpu_id for row in rows]
        lease.gpu_count = len(rows)
        lease.delivered_pflops = _rated_pflops(gpu_ids)
        lease.unit_price = pricing.quote(rows)
        lease.save(update_fields=["gpu_count", "delivered_pflops", "unit_price"])
        _event(
            lease,
            now,
            LeaseEvent.Kind.CREATED,
            state=lease.state,
            gpus=_uuids(gpu_ids),
            start_at=start.isoformat(),
            end_at=end_at.isoformat() if end_at else None,
        )
        return lease

    try:
        return _retrying(work)
    except NoCapacity:
        # Only now, off the fast path: a request no capacity could ever meet is bad input (400), not a 409.
        largest = largest_allocatable(plan=plan, filters=filters)
        if wanted > largest:
            field = {Plan.CARD_HOUR: "gpu_count", Plan.SERVER_MONTH: "servers"}.get(plan, "pflops")
            message = f"At most {largest} can be allocated with these filters."
            raise InvalidInput(message, fields={field: [message]}) from None
        raise


@platform_work(_PLATFORM)
def lease_end(*, lease: Lease, now: datetime | None = None) -> Lease:
    """End a lease now: its periods close now. A reservation that has not started is `cancelled` instead.

    Locks the lease row. A lease that already ended (or was preempted or cancelled) raises InvalidTransition.
    """
    now = now or timezone.now()
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        if lease.state == LeaseState.SCHEDULED and lease.start_at <= now:
            _start(lease, now=now)
        target = LeaseState.CANCELLED if lease.state == LeaseState.SCHEDULED else LeaseState.ENDED
        check_transition(lease.state, target)
        released = _close_allocations(Allocation.objects.filter(lease=lease), at=now, reason=target)
        _transition(lease, target, ended_at=now)
        _event(lease, now, target, reason="customer", gpus=_uuids(released))
    return lease


@platform_work(_PLATFORM)
def lease_fail(*, lease: Lease, reason: str, now: datetime | None = None) -> bool:
    """Fail an active lease whose workload never became usable: its cards are released now and it is not
    charged (billing charges such a lease from its workload's first `running` report, which never came).

    Locks the lease row; returns False (changing nothing) when the lease is no longer active, so racing callers
    fail it once.
    """
    now = now or timezone.now()
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        if lease.state != LeaseState.ACTIVE:
            return False
        released = _close_allocations(Allocation.objects.filter(lease=lease), at=now, reason=LeaseState.FAILED)
        _transition(lease, LeaseState.FAILED, ended_at=now)
        _event(lease, now, LeaseEvent.Kind.FAILED, reason=reason[:300], gpus=_uuids(released))
    return True


def lease_event_add(*, lease: Lease, kind: str, now: datetime | None = None, **data: Any) -> LeaseEvent:
    """Append an event to a lease's log from a layer above the scheduler (workload state changes)."""
    return _event(lease, now or timezone.now(), kind, **data)


@platform_work(_PLATFORM)
def lease_resize(*, lease: Lease, gpu_count: int, now: datetime | None = None) -> Lease:
    """Change a card_hour lease's card count: grow on the lease's servers where they can take it (elsewhere
    otherwise, NoCapacity if nowhere), shrink by closing the periods of the cards on its least-used servers.

    Locks the lease row, then card rows as `lease_create` does.
    """
    now = now or timezone.now()

    def work() -> Lease:
        locked = Lease.objects.select_for_update().get(pk=lease.pk)
        if locked.plan != Plan.CARD_HOUR:
            raise InvalidInput(
                "Only card_hour leases can be resized.", fields={"gpu_count": ["Only card_hour leases resize."]}
            )
        if locked.state not in (LeaseState.SCHEDULED, LeaseState.ACTIVE):
            raise InvalidTransition(f"A {locked.state} lease cannot be resized.")
        at = max(now, locked.start_at)
        held = list(selectors.held_allocations(lease=locked, at=now))
        current = len(held)
        added: list[int] = []
        removed: list[int] = []
        if gpu_count > current:
            models = {a.gpu.server.gpu_model_id for a in held} if held else set()
            model_id = locked.gpu_model_id or (models.pop() if len(models) == 1 else None)
            filters = Filters(
                plan=Plan.CARD_HOUR,
                interruptible=locked.interruptible,
                until=locked.end_at,
                gpu_count=gpu_count,
                gpu_model_id=model_id,
                region=locked.region,
                server_id=locked.server_id,
                runtime=locked.runtime,
                host_access=locked.host_access,
            )
            if gpu_count - current > largest_allocatable(plan=Plan.CARD_HOUR, filters=filters):
                raise NoCapacity()
            rows = _allocate(
                lease=locked,
                demand=Demand(plan=Plan.CARD_HOUR, gpu_count=gpu_count - current),
                filters=filters,
                start=at,
                end=locked.end_at,
                now=now,
                prefer_servers={a.server_id for a in held},
                preempt=not locked.interruptible,
            )
            added = [row.gpu_id for row in rows]
        elif gpu_count < current:
            per_server: dict[int, list[int]] = {}
            for a in sorted(held, key=lambda a: a.gpu.index):
                per_server.setdefault(a.server_id, []).append(a.pk)
            minimums = selectors.offer_minimums(per_server)
            going = allocator.cards_to_release(per_server, current - gpu_count, minimums)
            if going is None:
                raise InvalidInput(
                    "Giving back that many cards would leave a server with fewer than its offer's minimum.",
                    fields={"gpu_count": ["That would leave a server with fewer cards than its offer's minimum."]},
                )
            removed = _close_allocations(Allocation.objects.filter(pk__in=going), at=now, reason="resized")
        else:
            return locked
        held_now = [a.gpu_id for a in selectors.held_allocations(lease=locked, at=now)]
        locked.gpu_count = gpu_count
        locked.delivered_pflops = _rated_pflops(held_now)
        locked.save(update_fields=["gpu_count", "delivered_pflops"])
        _event(
            locked,
            now,
            LeaseEvent.Kind.RESIZED,
            from_count=current,
            to_count=gpu_count,
            added=_uuids(added),
            removed=_uuids(removed),
        )
        return locked

    return _retrying(work)


def _start(lease: Lease, *, now: datetime) -> bool:
    if _transition(lease, LeaseState.ACTIVE):
        _event(lease, now, LeaseEvent.Kind.STARTED)
        return True
    return False


def leases_start_due(*, now: datetime | None = None) -> int:
    """Reservations whose start has come become active. Idempotent (conditional UPDATE per lease)."""
    now = now or timezone.now()
    started = 0
    for lease in Lease.objects.filter(state=LeaseState.SCHEDULED, start_at__lte=now).order_by("start_at", "pk")[:1000]:
        with transaction.atomic():
            started += _start(lease, now=now)
    return started


def leases_end_due(*, now: datetime | None = None) -> int:
    """Active leases past their `end_at` end (their periods already end there). Idempotent."""
    now = now or timezone.now()
    ended = 0
    for lease in Lease.objects.filter(state=LeaseState.ACTIVE, end_at__lte=now).order_by("end_at", "pk")[:1000]:
        with transaction.atomic():
            if _transition(lease, LeaseState.ENDED, ended_at=lease.end_at):
                _close_allocations(Allocation.objects.filter(lease=lease), at=lease.end_at, reason="ended")
                _event(lease, now, LeaseEvent.Kind.ENDED, reason="end_at")
                ended += 1
    return ended


def preemptions_complete(*, now: datetime | None = None) -> int:
    """Interruptible leases whose preemption notice ran out become `preempted`. Idempotent."""
    now = now or timezone.now()
    done = 0
    due = Lease.objects.filter(
        state__in=[LeaseState.SCHEDULED, LeaseState.ACTIVE], preempt_at__isnull=False, preempt_at__lte=now
    )
    for lease in due.order_by("pk")[:1000]:
        with transaction.atomic():
            done += _finish_preemption(lease, now=now)
    return done


def leases_run(*, now: datetime | None = None) -> dict[str, int]:
    """The periodic job (beat every 30 s, `manage.py run_leases`): start due reservations, end expired leases,
    finish preemptions, fail over leases on failed cards or unreachable servers. Safe to run concurrently."""
    now = now or timezone.now()
    return {
        "started": leases_start_due(now=now),
        "ended": leases_end_due(now=now),
        "preempted": preemptions_complete(now=now),
        **failover_run(now=now),
    }


# --- failover ----------------------------------------------------------------------------------------------


def _replace_card(allocation: Allocation, *, now: datetime, reason: str) -> bool:
    """Move `allocation`'s lease off its card: close it now and allocate a healthy free card of the same model
    (same server first). With none free, record the shortfall. Returns whether a replacement was found."""
    lease = Lease.objects.select_for_update().get(pk=allocation.lease_id)
    gpu = Gpu.objects.select_related("server").get(pk=allocation.gpu_id)
    start = max(now, allocation.period.lower)
    end = allocation.period.upper
    _close_allocations(Allocation.objects.filter(pk=allocation.pk), at=now, reason="failover")
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
            rows = _allocate(
                lease=lease,
                demand=Demand(plan=Plan.CARD_HOUR, gpu_count=1),
                filters=filters,
                start=start,
                end=end,
                now=now,
                prefer_servers={gpu.server_id},
                price_like=allocation,
            )
    except NoCapacity:
        lost = (gpu.server.gpu_model.fp16_tflops / 1000).quantize(Decimal("0.001"))
        Lease.objects.filter(pk=lease.pk).update(
            shortfall_gpus=F("shortfall_gpus") + 1,
            delivered_pflops=F("delivered_pflops") - (lost if lease.plan == Plan.PFLOPS_YEAR else 0),
        )
        _event(lease, now, LeaseEvent.Kind.SHORTFALL, gpu=gpu.uuid, reason=reason, lost_pflops=str(lost))
        return False
    _event(lease, now, LeaseEvent.Kind.FAILOVER, from_gpu=gpu.uuid, to_gpu=_uuids([rows[0].gpu_id])[0], reason=reason)
    return True


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
    replaced = shortfalls = 0
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
                    ok = _replace_card(allocation, now=now, reason=f"card failed: {event.reason}"[:200])
                    replaced += ok
                    shortfalls += not ok
            GpuHealthEvent.objects.filter(pk=event.pk).update(handled_at=now)
    unreachable = Gpu.objects.filter(server__status=Server.Status.UNREACHABLE).values_list("pk", flat=True)
    for allocation_id in list(_live_allocations_on(unreachable, now).order_by("pk").values_list("pk", flat=True)):
        with transaction.atomic():
            allocation = (
                _live_allocations_on(unreachable, now)
                .select_for_update(skip_locked=True, of=("self",))
                .filter(pk=allocation_id)
                .first()
            )
            if allocation is None:
                continue
            ok = _replace_card(allocation, now=now, reason="server unreachable")
            replaced += ok
            shortfalls += not ok
    return {"replaced": replaced, "shortfalls": shortfalls}
