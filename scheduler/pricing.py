"""A lease's prices, fixed when it gets its cards: each server's offer price for the plan, in the renter's currency.

`price_allocations` is called on new allocation rows before they are inserted. A server the lease has not used
before gets its live offer's price (converted at SUANLI_FX_RATES when the offer is in another currency) written
into the lease's `price_book`; later cards on that server (a resize) pay the same. A price change or a delisting
after that never touches the lease.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import F

from inventory.models import Server
from scheduler.errors import NoCapacity
from scheduler.models import Allocation, Lease, Plan
from scheduler.selectors import live_offers

PRICE_PLACES = Decimal("0.000001")
UNIT_PLACES = Decimal("1e-18")


def rate_between(source: str, target: str) -> Decimal | None:
    """How many `target` one `source` buys, from SUANLI_FX_RATES (1 for the same currency); None when unset.
    The one lookup of exchange rates: leases are priced, and the storefront converts, at these."""
    if source == target:
        return Decimal(1)
    return settings.SUANLI_FX_RATES.get((source, target))


def fx_rate(source: str, target: str) -> Decimal:
    """`rate_between`, for pricing a lease: raises NoCapacity when no rate is set."""
    rate = rate_between(source, target)
    if rate is None:
        raise NoCapacity(f"No exchange rate from {source} to {target} is configured.")
    return rate


@dataclass(frozen=True)
class ServerFacts:
    """A server as the claim of its cards read it (scheduler/locks.py), so pricing need not read it again: its card
    count, its model's rated TFLOPS per card, and its live offer's price for the lease's plan in that offer's
    currency (None: not read, or no such offer)."""

    gpu_count: int
    tflops: Decimal
    price: Decimal | None = None
    currency: str | None = None


def _book_prices(
    lease: Lease, server_ids: Iterable[int], known: Mapping[int, ServerFacts], *, save: bool = True
) -> None:
    missing = sorted({sid for sid in server_ids if str(sid) not in lease.price_book})
    if not missing:
        return
    for sid in missing:
        facts = known.get(sid)
        if facts is not None and facts.price is not None and facts.currency is not None:
            lease.price_book[str(sid)] = _converted(facts.price, facts.currency, lease.currency)
    unread = [sid for sid in missing if str(sid) not in lease.price_book]
    if unread:
        offers = live_offers(plan=lease.plan, interruptible=lease.interruptible, until=lease.end_at).filter(
            server_id__in=unread
        )
        for offer in offers:
            price = offer.price(lease.plan, interruptible=lease.interruptible)
            lease.price_book[str(offer.server_id)] = _converted(price, offer.currency, lease.currency)
    if any(str(sid) not in lease.price_book for sid in missing):
        raise NoCapacity("An offer was withdrawn while the cards were being placed; try again.")
    if save:
        Lease.objects.filter(pk=lease.pk).update(price_book=lease.price_book)


def _converted(price: Decimal, source: str, target: str) -> str:
    return str((price * fx_rate(source, target)).quantize(PRICE_PLACES))


def price_allocations(
    lease: Lease, rows: list[Allocation], *, known: Mapping[int, ServerFacts] | None = None, save_book: bool = True
) -> None:
    """Set `unit_price` and `units` on the new allocation rows of `lease` (not yet saved).

    `known`: servers as the claim of their cards read them (their offers' prices are used when given, and no server
    is read again when all are there). `save_book` False leaves writing the lease's `price_book` to the caller
    (a lease being created writes its row once, after placing)."""
    if not rows:
        return
    known = known or {}
    _book_prices(lease, (row.server_id for row in rows), known, save=save_book)
    wanted = {row.server_id for row in rows}
    if wanted <= known.keys():
        servers = {sid: {"gpu_count": known[sid].gpu_count, "tflops": known[sid].tflops} for sid in wanted}
    else:
        servers = {
            s["pk"]: s
            for s in Server.objects.filter(pk__in=wanted).values("pk", "gpu_count", tflops=F("gpu_model__fp16_tflops"))
        }
    total_tflops = sum(servers[row.server_id]["tflops"] for row in rows)
    for row in rows:
        row.unit_price = Decimal(lease.price_book[str(row.server_id)])
        if lease.plan == Plan.CARD_HOUR:
            row.units = Decimal(1)
        elif lease.plan == Plan.SERVER_MONTH:
            row.units = (Decimal(1) / servers[row.server_id]["gpu_count"]).quantize(UNIT_PLACES)
        else:
            row.units = (lease.pflops * servers[row.server_id]["tflops"] / total_tflops).quantize(UNIT_PLACES)


def quote(rows: Iterable[Allocation]) -> Decimal:
    """The lease's headline price: the mean of its cards' prices, weighted by their units."""
    rows = list(rows)
    units = sum((row.units for row in rows), Decimal(0))
    if not units:
        return Decimal(0)
    return (sum((row.units * row.unit_price for row in rows), Decimal(0)) / units).quantize(PRICE_PLACES)
