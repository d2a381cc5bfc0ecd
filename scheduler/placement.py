"""Placement: finding and claiming cards for a lease, and preempting interruptible leases to make room.

`allocate`: measure free capacity per server, let the pure allocator place the demand, then claim that many cards
per server under `FOR NO KEY UPDATE SKIP LOCKED` inside a savepoint (scheduler/locks.py). A server that comes up
short is re-measured and the demand placed again; a demand short only because of locked cards waits once for
them; an exclusion-constraint violation rolls the savepoint back and is retried. Whatever fails in the end is
`NoCapacity` (409) and the caller's transaction rolls back: nothing is held. An on-demand request the free cards
cannot meet may take cards from interruptible leases, after their notice (`allocate_preempting`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.models import Exists, OuterRef, Q, Subquery

from accounts.tenancy import platform_work
from scheduler import allocator, locks, pricing, selectors
from scheduler.errors import NoCapacity
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan, check_transition
from scheduler.selectors import Filters, period_range
from scheduler.transitions import (
    append_event,
    close_allocations,
    finish_preemption,
    gpu_uuids,
    pflops_of,
    rated_pflops,
)

if TYPE_CHECKING:
    from inventory.models import Gpu

# Why the scheduler's services run across tenants while a request is handled (accounts/tenancy.py).
PLATFORM = "the scheduler places and changes leases on any provider's cards"

# Placement rounds per request: each round re-measures the servers that came up short.
MAX_ROUNDS = 64


@dataclass(frozen=True)
class Demand:
    """How much a lease asks for, in its plan's unit: cards, whole servers or rated PFLOPS."""

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


@platform_work(PLATFORM)
def largest_allocatable(*, plan: str, filters: Filters) -> Decimal | int:
    """The most that `filters` could ever allocate for `plan` (cards, servers or PFLOPS), free or not."""
    totals = selectors.allocatable_totals(filters)
    if plan == Plan.CARD_HOUR:
        return totals["cards"]
    if plan == Plan.SERVER_MONTH:
        return totals["servers"]
    return (Decimal(totals["tflops"]) / 1000).quantize(Decimal("0.001"))


def _capacity(filters: Filters, period: DateTimeTZRange, held: set[int]) -> dict[int, allocator.ServerCapacity]:
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


def allocate(
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
    fresh: bool = False,
    before_insert: Callable[[list[Allocation]], None] | None = None,
) -> list[Allocation]:
    """Allocate `demand` to `lease` for [start, end), all or nothing; call inside a transaction.

    Locks the chosen card rows (`FOR NO KEY UPDATE`, skip locked, then at most one blocking wait in primary-key
    order) before inserting the allocations. Raises NoCapacity when the demand cannot be met in full; the caller's
    transaction then rolls back, so nothing is held. New rows are priced from the lease's price book
    (scheduler/pricing.py), or like `price_like` (a failover replacement keeps the price of the card it replaces).
    `fresh`: the lease is new in this transaction (`lease_create` inserts its row in `before_insert`, once placed),
    so it holds no cards yet, and the caller writes its `price_book` with the rest of the row. `before_insert` is
    called with the placed and priced rows just before they are inserted (again for each round that gets that far,
    after the savepoint's rollback undid what the last one wrote): what the caller writes there is done before the
    insert takes the lock on the servers' capacity rows (the capacity triggers, scheduler/capacity_sql.py), which
    every request placing cards on the same server waits for until commit.

    The rows' cards come as the claim read them (`placed_cards`: uuids and rated PFLOPS without reading them again).
    """
    period = period_range(start, end)
    held = set() if fresh else _servers_held(lease, now)
    # Cards on one server, the usual request: the few best-fitting servers from the capacity rows (a lookup); all
    # servers' capacity only when those cannot place it. A lease growing onto its own servers (`prefer_servers`,
    # where placement looks first): those servers' capacity alone, and every server's only when they cannot take it.
    partial = None
    if demand.plan == Plan.CARD_HOUR and prefer_servers:
        partial = selectors.free_capacity(filters, period, held=held, server_ids=prefer_servers)
    elif demand.plan == Plan.CARD_HOUR:
        partial = selectors.best_fit_capacity(filters, period, demand.gpu_count, held=held)
    capacity = {c.server_id: c for c in partial} if partial else _capacity(filters, period, held)
    contended: set[int] = set()
    waited = False
    for _ in range(MAX_ROUNDS):
        placement = None
        if prefer_servers:
            placement = _place(demand, [c for c in capacity.values() if c.server_id in prefer_servers])
        if placement is None:
            placement = _place(demand, capacity.values())
        if partial and (placement is None or (len(placement) > 1 and not prefer_servers)):
            # The best fit on one server is among the few read, and a placement on the lease's own servers is the
            # one every server's capacity would give too (they come first); anything else is decided over every
            # server.
            placement, partial = None, None
            capacity = _capacity(filters, period, held)
            continue
        if placement is None:
            if contended and not waited:
                locks.wait_for_cards(server_ids=contended, period=period, filters=filters)
                waited = True
                contended.clear()
                capacity = _capacity(filters, period, held)
                continue
            if preempt:
                return allocate_preempting(
                    lease=lease,
                    demand=demand,
                    filters=filters,
                    start=start,
                    end=end,
                    now=now,
                    price_like=price_like,
                    before_insert=before_insert,
                    save_book=not fresh,
                )
            raise NoCapacity()
        # The savepoint goes with the first claim, in its round trip.
        savepoint = locks.savepoint_name()
        claimed, short = _claim(placement, period=period, filters=filters, savepoint=savepoint)
        if short:
            if claimed or any(short.values()):
                # Release what this round locked. Not when it locked nothing (the first server's claim got no card,
                # its capacity row most likely held by another writer): psycopg answers every ROLLBACK, a savepoint's
                # too, by deallocating the connection's prepared statements, which the best fit and the claim would
                # then be parsed and planned again for.
                transaction.savepoint_rollback(savepoint)
            for server_id, got in short.items():
                capacity[server_id] = replace(capacity[server_id], free=got)
                contended.add(server_id)
            continue
        cards = [(server_id, gpu.pk) for server_id, gpus in claimed.items() for gpu in gpus]
        read = {gpu.pk: gpu for gpus in claimed.values() for gpu in gpus}
        known = _server_facts(lease, filters, claimed)
        rows = _insert(
            lease,
            cards,
            period,
            price_like=price_like,
            read=read,
            known=known,
            save_book=not fresh,
            savepoint=savepoint,
            before_insert=before_insert,
        )
        if rows is None:
            # A card allocated by a transaction that committed between our snapshot and our lock (rolled back to
            # the savepoint).
            capacity = _capacity(filters, period, held)
            continue
        # The savepoint is not released: it commits or rolls back with the caller's transaction all the same, and
        # releasing it would be one more round trip on every lease.
        return rows
    raise NoCapacity()


def take_back_own_cards(*, lease: Lease, filters: Filters, start: datetime, end: datetime | None) -> list[Allocation]:
    """For a stopped lease starting again on its server: the cards its own stop released that still only wait for
    cleaning, taken back for [start, end), at most `lease.gpu_count`; call inside the start's transaction.

    Such a card is `needs_cleaning` and its last allocation is this lease's, closed by its stop: nobody has held it
    since (a card waiting for cleaning is allocatable to no one), so what is left on it is this lease's own, and
    cleaning, which protects the next tenant, has no one to protect. Otherwise the card is allocatable for the start
    (its server's offer, health, drain, runtime: `filters`). The cards are locked (`FOR NO KEY UPDATE SKIP LOCKED`,
    primary-key order) and the exclusion constraint has the last word (none is taken back if it refuses one). Their
    cleaning state becomes that of a card in a workload, as workloads.agent_channel sets a card it serves again
    (`needs_cleaning`, no version to wait for, no clean timeout running), so the report of the stop's version does
    not mark them clean, and once the lease ends they are cleaned like any card."""
    from inventory.models import Gpu  # the scheduler reads cards through its selectors elsewhere

    period = period_range(start, end)
    last = Allocation.objects.filter(gpu_id=OuterRef("pk")).order_by("-period__startswith", "-pk")
    ids = list(
        selectors.allocatable_gpus(filters, uncleaned_too=True)
        .filter(needs_cleaning=True, server_id=lease.server_id)
        .annotate(
            last_lease=Subquery(last.values("lease_id")[:1]), last_reason=Subquery(last.values("close_reason")[:1])
        )
        .filter(last_lease=lease.pk, last_reason=LeaseState.STOPPED)
        .exclude(Exists(selectors.overlapping(period)))
        .order_by("pk")
        .select_for_update(no_key=True, skip_locked=True, of=("self",))
        .values_list("pk", flat=True)[: lease.gpu_count]
    )
    if not ids:
        return []
    rows = _insert(lease, [(lease.server_id, gpu_id) for gpu_id in ids], period)
    if rows is None:
        return []
    Gpu.objects.filter(pk__in=ids).update(clean_after_version=None, clean_requested_at=None)
    return rows


def _claim(
    placement: allocator.Placement, *, period: DateTimeTZRange, filters: Filters, savepoint: str
) -> tuple[dict[int, list[Gpu]], dict[int, int]]:
    """Lock the placed cards server by server (in id order), stopping at the first server that comes up short; the
    first claim takes `savepoint` first.

    Returns the cards locked per server (as `locks.claim_free_cards` reads them) and, for a server short of cards,
    how many it had.
    """
    claimed: dict[int, list[Gpu]] = {}
    short: dict[int, int] = {}
    for server_id, count in sorted(placement.items()):
        ids = locks.claim_free_cards(
            server_id=server_id,
            count=count,
            period=period,
            filters=filters,
            savepoint=savepoint if not claimed else None,
        )
        if len(ids) < count:
            short[server_id] = len(ids)
            break
        claimed[server_id] = ids
    return claimed, short


def _server_facts(lease: Lease, filters: Filters, claimed: dict[int, list[Gpu]]) -> dict[int, pricing.ServerFacts]:
    """What the claim read of each server for pricing; its offer's price only when the claim asked for the offers
    the lease is priced from (the same plan, interruptibility and end)."""
    same_offers = (filters.plan, filters.interruptible, filters.until) == (
        lease.plan,
        lease.interruptible,
        lease.end_at,
    )
    facts = {}
    for server_id, gpus in claimed.items():
        card = gpus[0]
        facts[server_id] = pricing.ServerFacts(
            gpu_count=card.server_gpu_count,
            tflops=card.card_tflops,
            price=getattr(card, "offer_price", None) if same_offers else None,
            currency=getattr(card, "offer_currency", None) if same_offers else None,
        )
    return facts


def placed_cards(rows: list[Allocation]) -> tuple[list[str], Decimal]:
    """The uuids (primary-key order, as the event log names them) and the rated PFLOPS together of the cards of
    `rows`: from what the claim read with them (`allocate`), read again only when one was placed otherwise."""
    read = [row.gpu for row in rows if Allocation.gpu.is_cached(row) and hasattr(row.gpu, "card_tflops")]
    if len(read) < len(rows):
        ids = [row.gpu_id for row in rows]
        return gpu_uuids(ids), rated_pflops(ids)
    read.sort(key=lambda gpu: gpu.pk)
    return [gpu.uuid for gpu in read], pflops_of(sum((gpu.card_tflops for gpu in read), Decimal(0)))


def _insert(
    lease: Lease,
    cards: list[tuple[int, int]],
    period: DateTimeTZRange,
    *,
    price_like: Allocation | None = None,
    read: dict[int, Gpu] | None = None,
    known: dict[int, pricing.ServerFacts] | None = None,
    save_book: bool = True,
    savepoint: str | None = None,
    before_insert: Callable[[list[Allocation]], None] | None = None,
) -> list[Allocation] | None:
    """Insert and price the allocations of `cards` (server id, card id) for `period`; None when the exclusion
    constraint refuses one (rolled back to `savepoint`, the caller's, taken in its atomic block before the cards
    were claimed, else to one of its own; the caller's transaction stays usable). `read`: the cards as their claim
    read them (kept on the rows); `known`, `save_book`: see `pricing.price_allocations`; `before_insert`: see
    `allocate`."""
    rows = [Allocation(lease=lease, gpu_id=gpu_id, server_id=server_id, period=period) for server_id, gpu_id in cards]
    for row in rows:
        if read and row.gpu_id in read:
            row.gpu = read[row.gpu_id]
    _price(lease, rows, price_like, known=known, save_book=save_book)
    if before_insert is not None:
        before_insert(rows)
    if savepoint is not None:
        try:
            Allocation.objects.bulk_create(rows)
        except IntegrityError:
            # Back to a known-good savepoint of the current atomic block, as an inner atomic block would do (Django's
            # set_rollback): the work since it is undone, so the block need not be rolled back.
            transaction.set_rollback(False)
            transaction.savepoint_rollback(savepoint)
            return None
        return rows
    try:
        with transaction.atomic():
            Allocation.objects.bulk_create(rows)
    except IntegrityError:
        return None
    return rows


def _price(
    lease: Lease,
    rows: list[Allocation],
    like: Allocation | None,
    *,
    known: dict[int, pricing.ServerFacts] | None = None,
    save_book: bool = True,
) -> None:
    if like is None:
        pricing.price_allocations(lease, rows, known=known, save_book=save_book)
        return
    for row in rows:
        row.unit_price, row.units = like.unit_price, like.units


# --- preemption --------------------------------------------------------------------------------------------


def preemption_notice() -> timedelta:
    return timedelta(seconds=settings.SUANLI_PREEMPTION_NOTICE_SECONDS)


def _by_interruptible_only(period: DateTimeTZRange) -> Q:
    """Cards whose overlapping allocations (if any) all belong to live interruptible leases. A resale allocation
    (layer 1) does not count: it lives inside its backing allocation, whose lease decides (its resales follow it)."""
    firm = (
        selectors.overlapping(period)
        .filter(backing__isnull=True)
        .filter(Q(lease__interruptible=False) | ~Q(lease__state__in=[LeaseState.SCHEDULED, LeaseState.ACTIVE]))
    )
    return ~Q(Exists(firm))


def allocate_preempting(
    *,
    lease: Lease,
    demand: Demand,
    filters: Filters,
    start: datetime,
    end: datetime | None,
    now: datetime,
    price_like: Allocation | None = None,
    before_insert: Callable[[list[Allocation]], None] | None = None,
    save_book: bool = True,
) -> list[Allocation]:
    """An on-demand request the free cards cannot meet: count cards held by interruptible leases as free too.
    `before_insert` as for `allocate`; `save_book` False when the caller writes the lease's price book (`fresh`).

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
    victim_cards = _preempt_holders([gpu_id for _, gpu_id in claimed], period=period, cut=cut, now=now)
    allocations = [
        Allocation(
            lease=lease,
            gpu_id=gpu_id,
            server_id=server_id,
            period=period_range(cut if gpu_id in victim_cards else start, end),
        )
        for server_id, gpu_id in claimed
    ]
    _price(lease, allocations, price_like, save_book=save_book)
    if before_insert is not None:
        before_insert(allocations)
    try:
        with transaction.atomic():
            Allocation.objects.bulk_create(allocations)
    except IntegrityError:
        raise NoCapacity() from None
    return allocations


def _preempt_holders(gpu_ids: list[int], *, period: DateTimeTZRange, cut: datetime, now: datetime) -> set[int]:
    """Give notice to every lease holding one of `gpu_ids` during `period` (rows locked in id order); returns the
    cards they held, which become free only at `cut`. Resale leases on those cards are told by their contract's
    preemption (resale.follow_backing), not as holders of their own."""
    holding = Allocation.objects.filter(gpu_id__in=gpu_ids, period__overlap=period, backing__isnull=True)
    victim_ids = sorted(set(holding.values_list("lease_id", flat=True)))
    victim_cards = set(holding.values_list("gpu_id", flat=True))
    for victim in Lease.objects.filter(pk__in=victim_ids).order_by("pk").select_for_update():
        _preempt(victim, cut=cut, now=now)
    return victim_cards


def _preempt(victim: Lease, *, cut: datetime, now: datetime) -> None:
    if victim.state not in (LeaseState.SCHEDULED, LeaseState.ACTIVE) or not victim.interruptible:
        raise NoCapacity()  # pragma: no cover - excluded by the candidate query
    check_transition(victim.state, LeaseState.PREEMPTED)
    released = close_allocations(Allocation.objects.filter(lease=victim), at=cut, reason="preempted")
    Lease.objects.filter(pk=victim.pk).update(preempt_at=cut)
    victim.preempt_at = cut
    append_event(victim, now, LeaseEvent.Kind.PREEMPTION_NOTICE, effective_at=cut.isoformat(), gpus=gpu_uuids(released))
    if cut <= now:
        finish_preemption(victim, now=now)
    from scheduler import resale  # resale placement builds on this module

    resale.follow_backing(victim, at=cut, now=now, reason="backing_preempted")
