"""A broker's month for the resale money tests (issue 20): two providers' servers held by the month, and resale
histories written as the scheduler leaves them (a renter's card_hour lease on a resale offer whose allocations lie
inside the broker's contract allocations of the same cards, `Allocation.backing` set).

`resale_rows` writes a history's rows directly, so a property can draw any history (leases starting, ending and
resizing across the held cards at any second, in two currencies) without placement choosing for it; the database's
own rules (the exclusion constraint per layer, the trigger keeping a resale inside its backing allocation) still
hold every row. The end-to-end test drives the scheduler's resale services instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import time_machine
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange

from accounts.models import Organization
from billing.invoicing import Period, period_of
from inventory.models import Offer, Server
from scheduler import services
from scheduler.models import Allocation, Lease, Resale
from tests.factories import OrganizationFactory, ProviderFactory, online_server

D = Decimal
MONTH = "2026-03"
SERVER_MONTH_PRICE = D("9000.00")  # each provider's price for a whole 2-card server, per calendar month


@dataclass
class World:
    period: Period
    broker: Organization
    providers: list[Organization]
    renters: list[Organization]
    servers: list[Server]
    contracts: list[Lease]
    offers: list[Offer]
    cards: list[Allocation] = field(default_factory=list)  # the contracts' allocations, server by server


def broker_world(*, renter_currencies: tuple[str, ...] = ("USD", "USD", "CNY"), publish: bool = True) -> World:
    """A broker (a customer organisation) holding two 2-card servers of two providers for the whole month, each
    behind a resale offer (card-hour and interruptible prices; `publish=False`: none, for the services to publish);
    three renters."""
    period = period_of(MONTH)
    broker = OrganizationFactory(name="Broker Ltd", currency="USD")
    providers = [ProviderFactory(name=f"IDC {n}", currency="USD") for n in (1, 2)]
    servers = [
        online_server(gpus=2, organization=p, offer={"server_month_price": SERVER_MONTH_PRICE}) for p in providers
    ]
    contracts = []
    with time_machine.travel(period.start, tick=False):
        for server in servers:
            contracts.append(
                services.lease_create(org=broker, plan="server_month", servers=1, server=server, end_at=period.end)
            )
    offers = []
    for server, contract in zip(servers, contracts, strict=True) if publish else ():
        offer = Offer.objects.create(
            organization=broker,
            server=server,
            currency="USD",
            card_hour_price=D("4.0000"),
            card_hour_interruptible_price=D("2.0000"),
            is_resale=True,
        )
        Resale.objects.create(offer=offer, lease=contract)
        offers.append(offer)
    renters = [
        OrganizationFactory(name=f"Renter {n}", currency=currency) for n, currency in enumerate(renter_currencies)
    ]
    cards = [a for c in contracts for a in c.allocations.order_by("gpu__index")]
    return World(period, broker, providers, renters, servers, contracts, offers, cards)


@dataclass(frozen=True)
class Segment:
    """A renter's lease holding one held card for [start, end) seconds after the month's start."""

    card: int  # index into World.cards
    start: int
    end: int
    lease: int  # which of its server's resale leases (one per renter)
    interruptible: bool = False


def resale_rows(world: World, segments: list[Segment], prices: dict[tuple[int, int], Decimal]) -> dict:
    """Write the renters' resale leases and allocations of `segments`: lease (server, k) is renter k's lease on
    that server's resale offer at `prices[(server, k)]` per card-hour in the renter's currency. Returns
    (server, k) -> lease."""
    leases: dict[tuple[int, int], Lease] = {}
    for seg in sorted(segments, key=lambda s: (s.start, s.card)):
        backing = world.cards[seg.card]
        server = seg.card // 2
        key = (server, seg.lease)
        lo = world.period.start + timedelta(seconds=seg.start)
        hi = world.period.start + timedelta(seconds=seg.end)
        if key not in leases:
            renter = world.renters[seg.lease]
            leases[key] = Lease.objects.create(
                organization=renter,
                plan="card_hour",
                state="ended",
                interruptible=seg.interruptible,
                offer=world.offers[server],
                server=world.servers[server],
                gpu_count=1,
                start_at=lo,
                ended_at=hi,
                end_reason="customer",
                currency=renter.currency,
                unit_price=prices[key],
                price_book={str(world.servers[server].pk): str(prices[key])},
            )
        lease = leases[key]
        Allocation.objects.create(
            lease=lease,
            gpu_id=backing.gpu_id,
            server_id=backing.server_id,
            period=DateTimeTZRange(lo, hi, "[)"),
            unit_price=lease.unit_price,
            units=D(1),
            backing=backing,
            close_reason="ended",
        )
    for lease in leases.values():
        periods = [a.period for a in lease.allocations.all()]
        Lease.objects.filter(pk=lease.pk).update(
            start_at=min(p.lower for p in periods), ended_at=max(p.upper for p in periods)
        )
    return leases


def seconds_in(world: World) -> int:
    return int((world.period.end - world.period.start).total_seconds())


def at(world: World, seconds: int) -> datetime:
    return world.period.start + timedelta(seconds=seconds)
