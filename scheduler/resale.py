"""Resale (issue 20): capacity an organisation holds through its own contract, offered on to the market.

A broker (or any customer with committed capacity) holds cards through an active `server_month` or `pflops_year`
lease (the backing lease) and publishes a resale offer for the cards it holds on one server (`resale_offer_create`:
an `Offer` with `is_resale`, its organisation the reseller, and its `Resale` row naming the backing lease). Resale
offers price `card_hour` only. A lease on one is placed only on the backing lease's cards on that server that no
other resale lease holds (`allocate_resale`): its allocations point at the backing allocations (`Allocation.backing`,
layer 1), which are locked while it is placed; the exclusion constraint per layer keeps two resales off one card and
the containment trigger (scheduler/resale_sql.py) keeps each inside its backing allocation. Its end is the backing
lease's end at the latest (`resale_end`).

When the backing lease ends, fails or is preempted, its allocations close and their resales with them
(transitions.close_allocations), and `follow_backing` ends the resale leases left without cards (or gives them
the backing preemption's notice). A failed backing card is replaced and its resale follows to another held card
where one is free (scheduler/lifecycle.py). `resale_reclaim` is the lend-back's way home: the reseller preempts
interruptible resale leases on its offer with the usual notice (placement._preempt), and its own workload gets the
cards back once they are cleaned (workloads.agent_channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from accounts.errors import Conflict, InvalidInput, NotFound
from accounts.models import Organization
from accounts.tenancy import platform_work
from inventory.models import PLAN_PRICE_FIELDS, Gpu, Offer
from scheduler import pricing
from scheduler.errors import NoCapacity
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, Plan, Resale
from scheduler.placement import PLATFORM, _preempt, preemption_notice
from scheduler.selectors import period_range
from scheduler.transitions import append_event, move

# The contracts that may back a resale offer: they hold their cards for a term.
BACKING_PLANS = (Plan.SERVER_MONTH, Plan.PFLOPS_YEAR)
# Attempts at placing a resale lease when a racing one took a card first (the exclusion constraint said no).
MAX_ATTEMPTS = 8
LIVE = (LeaseState.SCHEDULED, LeaseState.ACTIVE)


def _held(backing_id: int, at: datetime) -> QuerySet[Allocation]:
    """The backing lease's own (layer 0) allocations held at `at` or later."""
    return Allocation.objects.filter(lease_id=backing_id, backing__isnull=True).filter(
        Q(period__endswith__isnull=True) | Q(period__endswith__gt=at)
    )


def held_cards_by_server(backing: Lease, at: datetime) -> dict[int, int]:
    """Server id -> how many cards `backing` holds there at `at` or later."""
    rows = _held(backing.pk, at).values("server_id").annotate(n=Count("gpu_id", distinct=True)).order_by()
    return {row["server_id"]: row["n"] for row in rows}


# --- offers ------------------------------------------------------------------------------------------------


def _field(name: str, message: str) -> InvalidInput:
    return InvalidInput(message, fields={name: [message]})


def resale_prices(
    prices: dict[str, Decimal | None],
    interruptible_prices: dict[str, Decimal | None],
    *,
    interruptible_only: bool,
    interruptible_backing: bool = False,
) -> dict[str, Decimal | None]:
    """The price fields of a resale offer: card_hour only; an on-demand price (with an optional cheaper
    interruptible one), or, lending idle cards back (`interruptible_only`), an interruptible price alone. A
    contract that is itself interruptible (`interruptible_backing`) can be preempted, so its cards are resold
    interruptibly only too: no renter pays for on-demand cards its reseller may lose."""
    others = [plan for plan in (*prices, *interruptible_prices) if plan != Plan.CARD_HOUR]
    if any(prices.get(plan) is not None or interruptible_prices.get(plan) is not None for plan in others):
        raise _field("prices", "A resale offer prices card_hour only.")
    firm, spot = prices.get(Plan.CARD_HOUR), interruptible_prices.get(Plan.CARD_HOUR)
    if interruptible_backing and firm is not None:
        raise _field(
            "prices",
            "card_hour: an interruptible contract can be preempted, so its cards are resold interruptibly only: "
            "give interruptible_prices.",
        )
    if interruptible_only or interruptible_backing:
        if firm is not None:
            raise _field("prices", "Idle cards lent back are rented interruptibly only: give interruptible_prices.")
        if spot is None:
            raise _field("interruptible_prices", "Give the card_hour interruptible price.")
    else:
        if firm is None:
            raise _field("prices", "Give the card_hour price.")
        if spot is not None and spot >= firm:
            raise _field("interruptible_prices", "card_hour: an interruptible price needs an on-demand price above it.")
    fields: dict[str, Decimal | None] = {name: None for pair in PLAN_PRICE_FIELDS.values() for name in pair}
    fields.update({PLAN_PRICE_FIELDS[Plan.CARD_HOUR][0]: firm, PLAN_PRICE_FIELDS[Plan.CARD_HOUR][1]: spot})
    return fields


def _pick_server(held: dict[int, int], server_id: int | None) -> int:
    if server_id is not None:
        if server_id not in held:
            raise _field("server", "This lease holds no cards on that server.")
        return server_id
    if len(held) != 1:
        raise _field(
            "server", f"This lease holds cards on {len(held)} servers: name one (one resale offer per server)."
        )
    return next(iter(held))


@platform_work(PLATFORM)
def resale_offer_create(
    *,
    org: Organization,
    lease: Lease,
    server_id: int | None = None,
    prices: dict[str, Decimal | None],
    interruptible_prices: dict[str, Decimal | None] | None = None,
    interruptible_only: bool = False,
    min_gpus: int = 1,
    available_until: datetime | None = None,
    currency: str | None = None,
    now: datetime | None = None,
) -> Offer:
    """Publish a resale offer of the cards `lease` (the caller's own active server_month or pflops_year contract)
    holds on one server (`server_id`; may be left out when it holds cards on one server only), available until the
    contract's end at the latest. One live resale offer per contract and server (a second is 409 `offer_exists`).

    Locks the backing lease row. NotFound for another organisation's lease; 409 `lease_not_active` for a lease not
    active; 400 for a plan that cannot back one, a server it holds no cards on, prices or dates out of bounds."""
    now = now or timezone.now()
    with transaction.atomic():
        backing = Lease.objects.select_for_update().get(pk=lease.pk)
        if backing.organization_id != org.pk:
            raise NotFound("Unknown lease.")
        if backing.plan not in BACKING_PLANS:
            raise _field("backed_by_lease", "Only a server_month or pflops_year contract can back a resale offer.")
        if backing.state != LeaseState.ACTIVE:
            raise Conflict(
                f"Lease {backing.pk} is {backing.state}: only an active contract can back a resale offer.",
                code="lease_not_active",
            )
        held = held_cards_by_server(backing, now)
        if not held:
            raise Conflict(f"Lease {backing.pk} holds no cards now.", code="lease_not_active")
        chosen = _pick_server(held, server_id)
        fields = resale_prices(
            prices,
            interruptible_prices or {},
            interruptible_only=interruptible_only,
            interruptible_backing=backing.interruptible,
        )
        assert backing.end_at is not None  # noqa: S101 - a contract has an end (lease_end_required_unless_card_hour)
        if available_until is None:
            available_until = backing.end_at
        elif available_until > backing.end_at:
            raise _field("available_until", f"No later than the contract's end, {backing.end_at.isoformat()}.")
        elif available_until <= now:
            raise _field("available_until", "Must be in the future.")
        if min_gpus > held[chosen]:
            raise _field("min_gpus", f"At most {held[chosen]}: the cards this lease holds on that server.")
        if Offer.objects.live().filter(is_resale=True, server_id=chosen, resale__lease=backing).exists():
            raise Conflict("This contract already has a live resale offer on that server.", code="offer_exists")
        offer = Offer.objects.create(
            organization=org,
            server_id=chosen,
            is_resale=True,
            currency=currency or org.currency,
            min_gpus=min_gpus,
            available_until=available_until,
            **fields,
        )
        Resale.objects.create(offer=offer, lease=backing, interruptible_only=interruptible_only)
    return offer


def check_offer_change(offer: Offer, values: dict) -> None:
    """The rules of a resale offer for a change of it (marketplace.services.offer_update, under the offer's lock):
    card_hour prices only (the lend-back's interruptible alone), and no end past the backing contract's."""
    resale = Resale.objects.select_related("lease").get(offer=offer)
    current = {name: getattr(offer, name) for pair in PLAN_PRICE_FIELDS.values() for name in pair}
    merged = {**current, **{k: v for k, v in values.items() if k in current}}
    prices = {plan: merged[firm] for plan, (firm, _spot) in PLAN_PRICE_FIELDS.items()}
    spots = {plan: merged[spot] for plan, (_firm, spot) in PLAN_PRICE_FIELDS.items()}
    resale_prices(
        prices, spots, interruptible_only=resale.interruptible_only, interruptible_backing=resale.lease.interruptible
    )
    until = values.get("available_until", offer.available_until)
    if "available_until" in values and (until is None or until > resale.lease.end_at):
        raise _field("available_until", f"No later than the contract's end, {resale.lease.end_at.isoformat()}.")
    if "min_gpus" in values and values["min_gpus"] > held_cards_by_server(resale.lease, timezone.now()).get(
        offer.server_id, 0
    ):
        raise _field("min_gpus", "More cards than the contract holds on that server.")


# --- placement ---------------------------------------------------------------------------------------------


def resale_end(offer: Offer, end_at: datetime | None) -> datetime | None:
    """The end of a lease on resale offer `offer` asked to end at `end_at` (None: open): the offer's
    `available_until` and the backing contract's end at the latest."""
    backing_end = Resale.objects.filter(offer=offer).values_list("lease__end_at", flat=True).first()
    bounds = [moment for moment in (end_at, offer.available_until, backing_end) if moment is not None]
    return min(bounds) if bounds else None


def resellable(offer: Offer, at: datetime) -> int:
    """Cards of the resale offer's contract on its server held at `at` or later: the most a lease on it may ask."""
    resale = Resale.objects.filter(offer=offer).only("lease_id").first()
    if resale is None:
        return 0
    return _held(resale.lease_id, at).filter(server_id=offer.server_id).values("gpu_id").distinct().count()


def _candidates(resale: Resale, server_id: int, period) -> QuerySet[Allocation]:
    """The backing lease's allocations on `server_id` covering `period` whose card is not failed and not resold
    at any instant of it."""
    return (
        Allocation.objects.filter(
            lease_id=resale.lease_id, server_id=server_id, backing__isnull=True, period__contains=period
        )
        .exclude(gpu__health=Gpu.Health.FAILED)
        .exclude(Exists(Allocation.objects.filter(backing_id=OuterRef("pk"), period__overlap=period)))
    )


def _price(lease: Lease, offer: Offer, rows: list[Allocation], like: Allocation | None) -> None:
    """Card-hour prices from the resale offer (converted to the renter's currency, fixed in its price book)."""
    if like is not None:
        for row in rows:
            row.unit_price, row.units = like.unit_price, like.units
        return
    key = str(offer.server_id)
    if key not in lease.price_book:
        price = offer.price(Plan.CARD_HOUR, interruptible=lease.interruptible)
        if price is None:
            raise NoCapacity("This resale offer has no such price any more.")
        converted = (price * pricing.fx_rate(offer.currency, lease.currency)).quantize(pricing.PRICE_PLACES)
        lease.price_book[key] = str(converted)
        Lease.objects.filter(pk=lease.pk).update(price_book=lease.price_book)
    for row in rows:
        row.unit_price, row.units = Decimal(lease.price_book[key]), Decimal(1)


def allocate_resale(
    *,
    lease: Lease,
    count: int,
    start: datetime,
    end: datetime | None,
    now: datetime,
    price_like: Allocation | None = None,
    listed_only: bool = True,
) -> list[Allocation]:
    """Place `count` cards of `lease` (a lease on a resale offer) for [start, end) on its backing lease's cards on
    the offer's server that no other resale holds then; call inside a transaction. All or nothing: NoCapacity. A
    delisted offer takes no new cards (`listed_only`), except a failed card's replacement: delisting never ends or
    shrinks the leases already on it.

    Locks the backing allocations of that server (primary-key order, waiting for a racing placement), then inserts
    the allocations with `backing` set inside a savepoint; when the exclusion constraint refuses one (a racing
    resale committed on that card after this statement's snapshot), it reads again, at most MAX_ATTEMPTS times."""
    resale = Resale.objects.select_related("offer", "offer__server").get(offer_id=lease.offer_id)
    offer = resale.offer
    if listed_only and offer.delisted_at is not None:
        raise NoCapacity("This resale offer is no longer listed.")
    end = resale_end(offer, end)
    if end is None or end <= start:
        raise NoCapacity("The contract behind this offer ends before that.")
    if lease.runtime and offer.server.runtime != lease.runtime:
        raise NoCapacity("This server does not run such workloads.")
    period = period_range(start, end)
    for _ in range(MAX_ATTEMPTS):
        locked = list(
            _candidates(resale, offer.server_id, period)
            .order_by("pk")
            .select_for_update(no_key=True, of=("self",))
            .values_list("pk", "gpu_id", "gpu__index")
        )
        if not Lease.objects.filter(pk=resale.lease_id, state=LeaseState.ACTIVE).exists():
            raise NoCapacity("The contract behind this resale offer is no longer active.")
        if len(locked) < count:
            raise NoCapacity(f"Only {len(locked)} of the cards behind this resale offer are free for that time.")
        chosen = sorted(locked, key=lambda row: (row[2], row[0]))[:count]
        rows = [
            Allocation(lease=lease, gpu_id=gpu_id, server_id=offer.server_id, period=period, backing_id=backing_id)
            for backing_id, gpu_id, _index in chosen
        ]
        _price(lease, offer, rows, price_like)
        try:
            with transaction.atomic():
                Allocation.objects.bulk_create(rows)
        except IntegrityError:
            continue
        return rows
    raise NoCapacity("The cards behind this resale offer are busy right now; try again.")


# --- life cycle --------------------------------------------------------------------------------------------


def resale_leases(backing: Lease) -> QuerySet[Lease]:
    """The live leases on `backing`'s resale offers."""
    return Lease.objects.filter(offer__resale__lease=backing, state__in=LIVE)


def check_not_resold(backing: Lease) -> None:
    """409 `resold_cards_in_use` while leases on `backing`'s resale offers are live: its customer may not end it
    under them (an on-demand renter was promised its cards; an interruptible one gets the usual notice through a
    reclaim). Call with `backing` locked: a new resale lease locks its backing allocations, not the lease row, so
    one racing in after this check still follows the end (`follow_backing`)."""
    counts = resale_leases(backing).values("interruptible").annotate(n=Count("pk")).order_by()
    live = dict(counts.values_list("interruptible", "n"))
    firm, spot = live.get(False, 0), live.get(True, 0)
    if not firm and not spot:
        return
    offers = ", ".join(map(str, sorted(set(resale_leases(backing).values_list("offer_id", flat=True)))))
    raise Conflict(
        f"Lease {backing.pk}'s cards are resold (resale offer {offers}): {firm} on-demand and {spot} interruptible "
        "resale leases run on them. Delist the offer (DELETE /api/v1/offers/{id}/), take the interruptible ones' "
        "cards back with the usual notice (POST /api/v1/offers/{id}/reclaim/), and end the contract once the "
        "on-demand ones have ended: they cannot be reclaimed.",
        code="resold_cards_in_use",
    )


def _still_holds(lease: Lease, at: datetime) -> bool:
    return (
        Allocation.objects.filter(lease=lease).filter(Q(period__endswith__isnull=True) | Q(period__endswith__gt=at))
    ).exists()


def _end_without_backing(lease: Lease, *, at: datetime, now: datetime, reason: str) -> bool:
    """`lease` (locked, live) lost every card with its backing: ended (cancelled when it never started) when that
    is now or past, else told it goes at `at`, as a preemption notice (run_leases finishes it then)."""
    if at > now:
        if lease.preempt_at is not None and lease.preempt_at <= at:
            return False
        Lease.objects.filter(pk=lease.pk).update(preempt_at=at)
        lease.preempt_at = at
        append_event(lease, now, LeaseEvent.Kind.PREEMPTION_NOTICE, effective_at=at.isoformat(), reason=reason)
        return True
    started = lease.state == LeaseState.ACTIVE or lease.start_at < at
    target = LeaseState.ENDED if started else LeaseState.CANCELLED
    if not move(lease, target, ended_at=max(at, lease.start_at) if started else at, end_reason=reason):
        return False
    append_event(lease, now, target, reason=reason)
    return True


def follow_backing(backing: Lease, *, at: datetime, now: datetime, reason: str = "backing_ended") -> int:
    """After `backing`'s allocations closed at `at` (and their resales with them): end its resale leases left
    holding no card from `at` on. A resale lease locked by another transaction (a resize waiting for the backing
    cards) is left to `resale_orphans_end`. Returns how many were ended or told."""
    done = 0
    for lease in resale_leases(backing).order_by("pk").select_for_update(skip_locked=True, of=("self",)):
        if not _still_holds(lease, at):
            done += _end_without_backing(lease, at=at, now=now, reason=reason)
    return done


def resale_orphans_end(*, now: datetime | None = None) -> int:
    """Live resale leases whose backing lease is no longer live and that hold no card now: ended (run_leases).
    Idempotent; a safety net for `follow_backing`, which skips leases another transaction holds."""
    now = now or timezone.now()
    orphans = (
        Lease.objects.filter(state__in=LIVE, offer__is_resale=True)
        .exclude(offer__resale__lease__state__in=LIVE)
        .values_list("pk", flat=True)
        .order_by("pk")
    )
    done = 0
    for lease_id in list(orphans[:1000]):
        with transaction.atomic():
            lease = Lease.objects.select_for_update(skip_locked=True).filter(pk=lease_id, state__in=LIVE).first()
            if lease is not None and not _still_holds(lease, now):
                done += _end_without_backing(lease, at=now, now=now, reason="backing_ended")
    return done


# --- lend-back: taking cards back ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reclaim:
    """What a reclaim did: `gpu_count` cards of `leases` go back to the contract at `effective_at`."""

    gpu_count: int
    leases: list[int]
    effective_at: datetime


def reclaimable(offer: Offer, at: datetime) -> list[tuple[Lease, int]]:
    """Interruptible leases on resale offer `offer` not already told to go, newest first, with the cards each
    holds from `at` on."""
    leases = list(
        Lease.objects.filter(offer=offer, state__in=LIVE, interruptible=True, preempt_at__isnull=True).order_by("-pk")
    )
    held = dict(
        Allocation.objects.filter(lease__in=leases)
        .filter(Q(period__endswith__isnull=True) | Q(period__endswith__gt=at))
        .values("lease_id")
        .annotate(n=Count("gpu_id", distinct=True))
        .order_by()
        .values_list("lease_id", "n")
    )
    return [(lease, held.get(lease.pk, 0)) for lease in leases if held.get(lease.pk)]


@platform_work(PLATFORM)
def resale_reclaim(*, offer: Offer, gpu_count: int, now: datetime | None = None) -> Reclaim:
    """Take `gpu_count` cards of resale offer `offer` back from interruptible leases on it, through the usual
    preemption (placement._preempt): each lease chosen (newest first, until they hold `gpu_count` cards) gets its
    notice now and loses all its cards at now + SUANLI_PREEMPTION_NOTICE_SECONDS; the backing lease's workload gets
    them once they are cleaned (workloads.agent_channel). On-demand resale leases are never touched.

    Locks the backing lease, then the leases taken. 409 `not_enough_interruptible` (nothing done) when the
    interruptible leases hold fewer cards."""
    now = now or timezone.now()
    if not offer.is_resale:
        raise InvalidInput("Only a resale offer's cards can be taken back.", code="not_resale")
    with transaction.atomic():
        resale = Resale.objects.get(offer=offer)
        Lease.objects.select_for_update().filter(pk=resale.lease_id).first()
        candidates = reclaimable(offer, now)
        locked = {
            lease.pk: lease
            for lease in Lease.objects.filter(pk__in=[lease.pk for lease, _n in candidates], state__in=LIVE)
            .order_by("pk")
            .select_for_update()
        }
        chosen: list[tuple[Lease, int]] = []
        total = 0
        for lease, cards in candidates:
            if total >= gpu_count:
                break
            if lease.pk in locked and locked[lease.pk].preempt_at is None:
                chosen.append((locked[lease.pk], cards))
                total += cards
        if total < gpu_count:
            raise Conflict(
                f"Interruptible leases on this offer hold {total} cards; {gpu_count} cannot be taken back.",
                code="not_enough_interruptible",
                extra={"reclaimable": total},
            )
        cut = now + preemption_notice()
        for lease, _cards in chosen:
            _preempt(lease, cut=cut, now=now)
    return Reclaim(gpu_count=total, leases=[lease.pk for lease, _n in chosen], effective_at=cut)


# --- reads ---------------------------------------------------------------------------------------------------


def resold_now(at: datetime) -> QuerySet[Allocation]:
    """Resale allocations of the outer query's (backing) allocation holding its card at `at`."""
    return Allocation.objects.filter(backing_id=OuterRef("pk"), period__contains=at)


def free_resale_cards(at: datetime, offer_ref: str = "pk") -> Subquery:
    """A resale offer's cards free at `at`, as search shows them, for an outer query whose `offer_ref` is the offer's
    id (an Offer, or a search row keyed by offer): its contract's cards on the offer's server held then, not failed,
    less those a resale lease holds then (NULL when none: callers coalesce)."""
    held = (
        Allocation.objects.filter(
            lease__resales__offer_id=OuterRef(offer_ref),
            server__offers__id=OuterRef(offer_ref),
            backing__isnull=True,
            period__contains=at,
        )
        .exclude(gpu__health=Gpu.Health.FAILED)
        .exclude(Exists(resold_now(at)))
        .order_by()
        .values("lease_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Subquery(held, output_field=IntegerField())
