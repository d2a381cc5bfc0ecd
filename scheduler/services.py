"""The lease verbs, what the API, the pages and the layers above call: create, end, resize, stop, start and fail
a lease, and add to its event log.

Each verb runs in one transaction; `lease_create` and `lease_resize` place cards (scheduler/placement.py) and run
again after a deadlock. The periodic life of leases (start, end, preemption, failover) is scheduler/lifecycle.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from django.db import OperationalError, transaction
from django.utils import timezone

from accounts.errors import InvalidInput, InvalidTransition, NotAllowed
from accounts.models import Organization
from accounts.tenancy import platform_work
from inventory.models import GpuModel, Offer, Server
from scheduler import admission, allocator, elastic, pricing, resale, restarts, selectors
from scheduler.errors import NoCapacity
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan, ScalingRule, check_transition
from scheduler.placement import PLATFORM, Demand, allocate, largest_allocatable, placed_cards, take_back_own_cards
from scheduler.selectors import Filters
from scheduler.transitions import (
    append_event,
    close_allocations,
    gpu_uuids,
    insert_with_event,
    move,
    rated_pflops,
    start,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Whole-transaction attempts after a deadlock (PostgreSQL aborts one side; we run it again).
MAX_ATTEMPTS = 4

# When to try a start again while cards of its server are being cleaned: agents report every few seconds, and a
# card is free again at the first report after its workload is gone.
CLEANING_RETRY_SECONDS = 60


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


# --- create ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRequest:
    """A customer's request for a lease, as `lease_create` received it, with its start settled: what to place
    (`demand`), where (`filters`) and for [start, end_at)."""

    org: Organization
    plan: str
    gpu_count: int | None
    servers: int | None
    pflops: Decimal | None
    gpu_model: GpuModel | None
    region: str
    server: Server | None
    offer: Offer | None
    start: datetime
    end_at: datetime | None
    interruptible: bool
    runtime: str
    host_access: bool
    now: datetime

    @property
    def demand(self) -> Demand:
        return Demand(
            plan=self.plan,
            gpu_count=self.gpu_count or 0,
            servers=self.servers or 0,
            pflops=self.pflops,
            mix_models=self.gpu_model is None,
        )

    @property
    def filters(self) -> Filters:
        return Filters(
            plan=self.plan,
            interruptible=self.interruptible,
            until=self.end_at,
            gpu_count=self.gpu_count if self.plan == Plan.CARD_HOUR else None,
            gpu_model_id=self.gpu_model.pk if self.gpu_model else None,
            region=self.region,
            server_id=self.server.pk if self.server else None,
            runtime=self.runtime,
            host_access=self.host_access,
        )

    @property
    def wanted(self) -> Decimal | int:
        """How much is asked, in the plan's unit (cards, servers, PFLOPS)."""
        if self.plan == Plan.CARD_HOUR:
            return self.gpu_count or 0
        if self.plan == Plan.SERVER_MONTH:
            return self.servers or 0
        return self.pflops or Decimal(0)

    @property
    def wanted_field(self) -> str:
        """The input field that says how much is asked."""
        if self.plan == Plan.CARD_HOUR:
            return "gpu_count"
        return "servers" if self.plan == Plan.SERVER_MONTH else "pflops"

    def lease_fields(self) -> dict[str, Any]:
        """The lease row's fields before its cards are placed and priced."""
        return dict(
            organization=self.org,
            plan=self.plan,
            state=LeaseState.SCHEDULED if self.start > self.now else LeaseState.ACTIVE,
            interruptible=self.interruptible,
            gpu_model=self.gpu_model,
            region=self.region,
            server=self.server,
            offer=self.offer,
            currency=self.org.currency,
            unit_price=0,
            gpu_count=self.gpu_count or 0,
            servers=self.servers if self.plan == Plan.SERVER_MONTH else None,
            pflops=self.pflops if self.plan == Plan.PFLOPS_YEAR else None,
            start_at=self.start,
            end_at=self.end_at,
            runtime=self.runtime,
            host_access=self.host_access,
        )


@platform_work(PLATFORM)
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
    scaling: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Lease:
    """Create a lease and allocate all its cards for [start, end), or raise NoCapacity holding nothing (or what an
    admission check raises: billing's 402 when the organisation's money cannot cover it; scheduler/admission.py).
    `scaling` gives a card_hour lease its scaling rule (scheduler/elastic.py) in the same transaction; its
    `gpu_count` must lie within the rule's bounds.

    A start in the future makes a reservation (`scheduled`) that holds its cards for its time range. Locks the
    chosen card rows (see `placement.allocate`); retried after a deadlock. Not idempotent by itself: the API makes
    it so with `Idempotency-Key`.
    """
    now = now or timezone.now()
    if org.billing_hold:
        raise NotAllowed("Your organisation has an overdue invoice; pay it to start new leases.", code="billing_hold")
    rule = _scaling_settings(scaling, plan=plan, gpu_count=gpu_count) if scaling is not None else None
    if offer is not None and offer.is_resale:
        # A resale lease ends with the contract behind it at the latest (scheduler/resale.py).
        end_at = resale.resale_end(offer, end_at)
    request = LeaseRequest(
        org=org,
        plan=plan,
        gpu_count=gpu_count,
        servers=servers,
        pflops=pflops,
        gpu_model=gpu_model,
        region=region or "",
        server=offer.server if offer is not None else server,
        offer=offer,
        start=start_at if start_at and start_at > now else now,
        end_at=end_at,
        interruptible=interruptible,
        runtime=runtime,
        host_access=host_access,
        now=now,
    )
    try:
        return _retrying(lambda: _lease_place(request, rule))
    except NoCapacity:
        # Only now, off the fast path: a request no capacity could ever meet is bad input (400), not a 409.
        if offer is not None and offer.is_resale:
            largest = resale.resellable(offer, request.start)
        else:
            largest = largest_allocatable(plan=plan, filters=request.filters)
        if request.wanted > largest:
            message = f"At most {largest} can be allocated with these filters."
            raise InvalidInput(message, fields={request.wanted_field: [message]}) from None
        raise


def _scaling_settings(scaling: dict[str, Any], *, plan: str, gpu_count: int | None) -> dict[str, Any]:
    """The settings of a new lease's scaling rule, or InvalidInput under `scaling` (or `gpu_count`)."""
    if plan != Plan.CARD_HOUR:
        raise InvalidInput("Only card_hour leases can scale.", fields={"scaling": ["Only card_hour leases can scale."]})
    settings = elastic.rule_settings(scaling, within="scaling")
    if gpu_count is not None and not settings["min_gpus"] <= gpu_count <= settings["max_gpus"]:
        message = "Must lie within the scaling rule's min_gpus and max_gpus."
        raise InvalidInput(message, fields={"gpu_count": [message]})
    return settings


def _lease_place(request: LeaseRequest, scaling: dict[str, Any] | None = None) -> Lease:
    """Place the lease's cards, then insert its row (and its scaling rule) once, priced, with its creation event and
    admission, just before its cards' rows; call inside a transaction. (A lease on a resale offer is inserted first:
    its cards' rows are written as they are placed, scheduler/resale.py.)"""
    lease = Lease(**request.lease_fields())
    on_resale = request.offer is not None and request.offer.is_resale
    if on_resale:
        lease.save(force_insert=True)
        if scaling is not None:
            ScalingRule.objects.create(lease=lease, **scaling)

    def settle(rows: list[Allocation]) -> None:
        # The lease's row, its creation event and its admission, before its cards' rows are written: the insert of
        # those takes the lock on their servers' capacity rows, which other requests for the same servers wait on
        # until commit. (A lease on a resale offer has its cards' rows written by then.)
        uuids, lease.delivered_pflops = placed_cards(rows)
        lease.gpu_count = len(rows)
        lease.unit_price = pricing.quote(rows)
        created = dict(
            state=lease.state,
            gpus=uuids,
            start_at=request.start.isoformat(),
            end_at=request.end_at.isoformat() if request.end_at else None,
        )
        if on_resale:
            lease.save(update_fields=["gpu_count", "delivered_pflops", "unit_price", "price_book"])
            append_event(lease, request.now, LeaseEvent.Kind.CREATED, **created)
        else:
            # The row, placed and priced, with its creation event in one statement. Placement calls this again only
            # after rolling back to its savepoint, taken before any of it, so an earlier round's row is gone: anew.
            lease.pk = None
            lease._state.adding = True
            insert_with_event(lease, request.now, LeaseEvent.Kind.CREATED, **created)
            for row in rows:  # made before this round's insert: an earlier round's id would be on them
                row.lease = lease
            if scaling is not None:
                ScalingRule.objects.create(lease=lease, **scaling)
        admission.admit(lease, rows, request.now)

    if on_resale:
        rows = resale.allocate_resale(
            lease=lease, count=request.gpu_count or 0, start=request.start, end=request.end_at, now=request.now
        )
        settle(rows)
    else:
        rows = allocate(
            lease=lease,
            demand=request.demand,
            filters=request.filters,
            start=request.start,
            end=request.end_at,
            now=request.now,
            preempt=not request.interruptible,
            fresh=True,
            before_insert=settle,
        )
    return lease


# --- end, fail, log ----------------------------------------------------------------------------------------


@platform_work(PLATFORM)
def lease_end(*, lease: Lease, now: datetime | None = None, reason: str = "customer") -> Lease:
    """End a lease now: its periods close now. A reservation that has not started is `cancelled` instead.
    `reason` is why (`end_reason`, and the event's): the customer asked, or billing stopped it (funds_exhausted).

    Locks the lease row. A lease that already ended (or was preempted or cancelled) raises InvalidTransition. The
    customer's own end of a contract whose cards are resold (any live lease on its resale offers) is 409
    `resold_cards_in_use`: its renters' leases would end at once, with no notice. Endings not asked for by the
    customer (billing's funds_exhausted) end them as the backing's expiry does (`backing_ended`).
    """
    now = now or timezone.now()
    with transaction.atomic():
        lease = Lease.objects.select_for_update().get(pk=lease.pk)
        if reason == "customer":
            resale.check_not_resold(lease)
        if lease.state == LeaseState.SCHEDULED and lease.start_at <= now:
            start(lease, now=now)
        target = LeaseState.CANCELLED if lease.state == LeaseState.SCHEDULED else LeaseState.ENDED
        check_transition(lease.state, target)
        released = close_allocations(Allocation.objects.filter(lease=lease), at=now, reason=target)
        move(lease, target, ended_at=now, end_reason=reason)
        append_event(lease, now, target, reason=reason, gpus=gpu_uuids(released))
        resale.follow_backing(lease, at=now, now=now)
    return lease


@platform_work(PLATFORM)
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
        released = close_allocations(Allocation.objects.filter(lease=lease), at=now, reason=LeaseState.FAILED)
        move(lease, LeaseState.FAILED, ended_at=now, end_reason="workload_failed")
        append_event(lease, now, LeaseEvent.Kind.FAILED, reason=reason[:300], gpus=gpu_uuids(released))
        resale.follow_backing(lease, at=now, now=now)
    return True


def lease_event_add(*, lease: Lease, kind: str, now: datetime | None = None, **data: Any) -> LeaseEvent:
    """Append an event to a lease's log from a layer above the scheduler (workload state changes)."""
    return append_event(lease, now or timezone.now(), kind, **data)


# --- stop and start ----------------------------------------------------------------------------------------


def _stop_refusal(lease: Lease, now: datetime) -> InvalidTransition | None:
    """Why `lease` (locked) may not stop now, or None."""
    if lease.plan != Plan.CARD_HOUR:
        return InvalidTransition(
            "Only card_hour leases can be stopped; a contract holds its cards for its whole term.", code="not_stoppable"
        )
    if lease.offer_id is not None and lease.offer.is_resale:
        # It could start again only on its contract's cards, which may be resold meanwhile: it ends instead.
        return InvalidTransition("A lease on a resale offer cannot be stopped; end it instead.", code="not_stoppable")
    if lease.interruptible:
        # Its cards may be taken for an on-demand lease at any time: it ends (and keeps its volumes) instead.
        return InvalidTransition("An interruptible lease cannot be stopped; end it instead.", code="not_stoppable")
    if lease.state != LeaseState.ACTIVE:
        return InvalidTransition(f"A {lease.state} lease cannot be stopped.")
    if lease.end_at is not None and lease.end_at <= now:
        return InvalidTransition("This lease has reached its end time.")
    return None


@platform_work(PLATFORM)
def lease_stop(*, lease: Lease, now: datetime | None = None) -> Lease:
    """Stop an active card_hour lease: every card is released now (periods closed with reason "stopped", so
    billing charges no card time until it starts again) and the lease keeps its server, where its volumes are, for
    `lease_start`. Its workload leaves the server's desired state (its lease is no longer active), so the agent
    removes the container and keeps the volumes.

    A lease spread over several servers cannot stop (it could not come back to one server with its volumes).
    Locks the lease row; InvalidTransition (409) when it may not stop.
    """
    now = now or timezone.now()
    with transaction.atomic():
        locked = Lease.objects.select_for_update().get(pk=lease.pk)
        refusal = _stop_refusal(locked, now)
        if refusal is not None:
            raise refusal
        held = selectors.held_allocations(lease=locked, at=now)
        servers = set(held.values_list("server_id", flat=True))
        if len(servers) > 1:
            raise InvalidTransition(
                "This lease holds cards on several servers and cannot be stopped; resize it onto one or end it.",
                code="not_stoppable",
            )
        server_id = servers.pop() if servers else locked.server_id or _last_server(locked)
        released = close_allocations(Allocation.objects.filter(lease=locked), at=now, reason=LeaseState.STOPPED)
        move(locked, LeaseState.STOPPED, server_id=server_id)
        append_event(locked, now, LeaseEvent.Kind.STOPPED, server=server_id, gpus=gpu_uuids(released))
    return locked


def _last_server(lease: Lease) -> int | None:
    """The server of the lease's latest card (one that lost every card to failures holds none now)."""
    last = Allocation.objects.filter(lease=lease).order_by("-period__startswith", "-pk").first()
    return last.server_id if last else None


@platform_work(PLATFORM)
def lease_start(*, lease: Lease, now: datetime | None = None) -> Lease:
    """Start a stopped lease again: `gpu_count` cards on the server it stopped on (never another: its volumes are
    there) from now until its end, priced from its price book, through the same admission as a new lease (billing's
    402 when its organisation's money cannot cover them). NoCapacity (409 `no_capacity`) when that server cannot
    give them now, holding nothing. The layers above bring its workload back (scheduler/restarts.py).

    Locks the lease row, then card rows as `lease_create` does; retried after a deadlock.
    """
    now = now or timezone.now()

    def work() -> Lease:
        locked = Lease.objects.select_for_update().select_related("organization").get(pk=lease.pk)
        if locked.state != LeaseState.STOPPED:
            raise InvalidTransition(f"A {locked.state} lease cannot be started; only a stopped one can.")
        if locked.end_at is not None and locked.end_at <= now:
            raise InvalidTransition("This lease has reached its end time.")
        if locked.organization.billing_hold:
            raise NotAllowed(
                "Your organisation has an overdue invoice; pay it to start leases again.", code="billing_hold"
            )
        filters = Filters(
            plan=Plan.CARD_HOUR,
            until=locked.end_at,
            gpu_count=locked.gpu_count,
            server_id=locked.server_id,
            runtime=locked.runtime,
            host_access=locked.host_access,
        )
        # Its own cards, released by its stop and only waiting for cleaning, come back at once (placement docstring);
        # the rest are free cards of the same server.
        rows = take_back_own_cards(lease=locked, filters=filters, start=now, end=locked.end_at)
        if len(rows) < locked.gpu_count:
            try:
                rows += allocate(
                    lease=locked,
                    demand=Demand(plan=Plan.CARD_HOUR, gpu_count=locked.gpu_count - len(rows)),
                    filters=filters,
                    start=now,
                    end=locked.end_at,
                    now=now,
                    preempt=True,
                )
            except NoCapacity:
                raise _no_capacity_to_start(locked, filters) from None
        gpu_ids = [row.gpu_id for row in rows]
        move(
            locked,
            LeaseState.ACTIVE,
            only_from=[LeaseState.STOPPED],
            shortfall_gpus=0,
            delivered_pflops=rated_pflops(gpu_ids),
        )
        admission.admit(locked, rows, now)
        restarts.restarted(locked, now)
        append_event(locked, now, LeaseEvent.Kind.RESTARTED, server=locked.server_id, gpus=gpu_uuids(gpu_ids))
        return locked

    return _retrying(work)


def _no_capacity_to_start(lease: Lease, filters: Filters) -> NoCapacity:
    """The 409 of a start its server cannot give cards to now, saying whether cards there are being cleaned after
    other leases (they come back once its agent reports them clean, normally within a minute of the next report;
    a card not reported clean within SUANLI_WORKLOAD_CLEAN_TIMEOUT_SECONDS is drained for its provider) and when
    to try again. `cleaning` and `retry_after_seconds` say the same for scripts."""
    cleaning = (
        selectors.allocatable_gpus(filters, uncleaned_too=True)
        .filter(server_id=lease.server_id, needs_cleaning=True)
        .count()
    )
    message = f"Server {lease.server_id} has not got {lease.gpu_count} free cards now; nothing changed."
    extra: dict[str, int] = {"cleaning": cleaning}
    if cleaning:
        message += (
            f" {cleaning} of its cards are being cleaned after the leases that used them: they are free once the "
            f"server reports them clean, normally within a minute; try again in {CLEANING_RETRY_SECONDS} seconds."
        )
        extra["retry_after_seconds"] = CLEANING_RETRY_SECONDS
    else:
        message += " Its cards are rented by other leases; try again later, or move its volumes to another server."
    return NoCapacity(message, extra=extra)


# --- resize ------------------------------------------------------------------------------------------------


@platform_work(PLATFORM)
def lease_resize(
    *, lease: Lease, gpu_count: int, now: datetime | None = None, scaled: dict[str, Any] | None = None
) -> Lease:
    """Change a card_hour lease's card count: grow on the lease's servers where they can take it (elsewhere
    otherwise, NoCapacity if nowhere), shrink by closing the periods of the cards on its least-used servers.
    0 cards only for a lease whose scaling rule allows it (min_gpus 0): it stays active holding none, and grows
    back on cards of the model it last held. `scaled` is the scaling rule's reason (scheduler/elastic.py): the
    event is then "scaled" with it, instead of "resized".

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
        if gpu_count < 0 or (gpu_count == 0 and not ScalingRule.objects.filter(lease=locked, min_gpus=0).exists()):
            message = "Must be at least 1 (0 only for a lease whose scaling rule has min_gpus 0)."
            raise InvalidInput(message, fields={"gpu_count": [message]})
        held = list(selectors.held_allocations(lease=locked, at=now))
        current = len(held)
        added: list[int] = []
        removed: list[int] = []
        if gpu_count > current:
            added = _grow(locked, held, by=gpu_count - current, gpu_count=gpu_count, now=now)
        elif gpu_count < current:
            removed = _shrink(held, by=current - gpu_count, now=now)
        else:
            return locked
        held_now = [a.gpu_id for a in selectors.held_allocations(lease=locked, at=now)]
        locked.gpu_count = gpu_count
        locked.delivered_pflops = rated_pflops(held_now)
        locked.save(update_fields=["gpu_count", "delivered_pflops"])
        data = {**(scaled or {}), "from_count": current, "to_count": gpu_count}
        data.update(added=gpu_uuids(added), removed=gpu_uuids(removed))
        kind = LeaseEvent.Kind.SCALED if scaled is not None else LeaseEvent.Kind.RESIZED
        append_event(locked, now, kind, **data)
        return locked

    return _retrying(work)


def _grow(lease: Lease, held: list[Allocation], *, by: int, gpu_count: int, now: datetime) -> list[int]:
    """Allocate `by` more cards to `lease` from now (or its start), on its servers first; the ids added.

    Cards of the lease's GPU model, or of the one model it holds; NoCapacity when none could ever be found. A lease
    on a resale offer grows only onto its contract's other free cards (scheduler/resale.py)."""
    if lease.offer_id is not None and lease.offer.is_resale:
        rows = resale.allocate_resale(lease=lease, count=by, start=max(now, lease.start_at), end=lease.end_at, now=now)
        admission.admit(lease, rows, now)
        return [row.gpu_id for row in rows]
    models = {a.gpu.server.gpu_model_id for a in held} if held else set()
    prefer = {a.server_id for a in held}
    if not held:
        # Growing back from 0 cards (an elastic lease): the model and server it held last, where its volumes are.
        last = Allocation.objects.filter(lease=lease).select_related("server").order_by("-period__startswith").first()
        if last is not None:
            models, prefer = {last.server.gpu_model_id}, {last.server_id}
    model_id = lease.gpu_model_id or (models.pop() if len(models) == 1 else None)
    filters = Filters(
        plan=Plan.CARD_HOUR,
        interruptible=lease.interruptible,
        until=lease.end_at,
        gpu_count=gpu_count,
        gpu_model_id=model_id,
        region=lease.region,
        server_id=lease.server_id,
        runtime=lease.runtime,
        host_access=lease.host_access,
    )
    # No count of what the filters could ever hold first (a read of every server's cards): a request beyond it
    # finds no placement, free or by preemption, and raises NoCapacity all the same.
    rows = allocate(
        lease=lease,
        demand=Demand(plan=Plan.CARD_HOUR, gpu_count=by),
        filters=filters,
        start=max(now, lease.start_at),
        end=lease.end_at,
        now=now,
        prefer_servers=prefer,
        preempt=not lease.interruptible,
        # Admitted before the rows are written, as a new lease is: the organisation's lock, when admission takes
        # it, comes before the servers' capacity rows' in both.
        before_insert=lambda new: admission.admit(lease, new, now),
    )
    return [row.gpu_id for row in rows]


def _shrink(held: list[Allocation], *, by: int, now: datetime) -> list[int]:
    """Give back `by` of the `held` cards now, from the least-used servers, keeping each offer's minimum; the
    card ids released."""
    per_server: dict[int, list[int]] = {}
    for a in sorted(held, key=lambda a: a.gpu.index):
        per_server.setdefault(a.server_id, []).append(a.pk)
    minimums = selectors.offer_minimums(per_server)
    going = allocator.cards_to_release(per_server, by, minimums)
    if going is None:
        raise InvalidInput(
            "Giving back that many cards would leave a server with fewer than its offer's minimum.",
            fields={"gpu_count": ["That would leave a server with fewer cards than its offer's minimum."]},
        )
    return close_allocations(Allocation.objects.filter(pk__in=going), at=now, reason="resized")
