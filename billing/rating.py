"""Rating: what held seconds cost under each plan. Pure functions, no database (tested with hypothesis).

- `card_hour`: price per card per hour, per second held.
- `server_month`: price per whole server per calendar month (platform time zone), pro-rated over the seconds of
  the month in which the second falls; each card carries 1/gpu_count of its server (`units`).
- `pflops_year`: price per PFLOPS per year of 365 days; each card carries its share of the contracted PFLOPS
  (`units`), so capacity delivered beyond the contract is not charged and a lost card's share is not either.

A usage amount keeps 12 decimal places; money is rounded once, half-up to the cent, where a line is made
(`to_money`). Every function takes the seconds already net of down time.

An amount (and a quantity) is the difference of one curve at two instants: the cost from the start of the month
up to an instant, rounded at 12 places. Consecutive slots of an allocation share their edges, so their amounts
telescope: a stretch held without down time costs its exact price rounded at its two ends only, however many hour
slots it is cut into or wherever a resize splits it, and a whole month of a server is exactly its monthly price.
Rounding each slot on its own instead drifts by up to half a unit of the 12th place per slot, which is enough to
move a half-cent price to the wrong cent (100.0050 a month over 720 hour slots came to 100.00).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from functools import lru_cache
from zoneinfo import ZoneInfo

from django.conf import settings

EXACT = Decimal("0.000000000001")
CENT = Decimal("0.01")
HOUR_SECONDS = 3600
YEAR_SECONDS = 365 * 86400
UNIT_NAMES = {"card_hour": "card-hour", "server_month": "server-month", "pflops_year": "PFLOPS-year"}


def platform_zone() -> ZoneInfo:
    return ZoneInfo(settings.PLATFORM_TIME_ZONE)


def month_bounds(at: datetime, zone: ZoneInfo | None = None) -> tuple[datetime, datetime]:
    """The calendar month (platform time zone) that contains `at`, as aware UTC instants [start, end)."""
    zone = zone or platform_zone()
    local = at.astimezone(zone)
    return _month(local.year, local.month, zone)


@lru_cache(maxsize=512)
def _month(year: int, month: int, zone: ZoneInfo) -> tuple[datetime, datetime]:
    # Both bounds from wall-clock fields in the zone, so a DST change inside the month is counted right.
    start = datetime(year, month, 1)  # noqa: DTZ001 - a wall-clock time, placed in `zone` by _utc
    end = datetime(year + month // 12, month % 12 + 1, 1)  # noqa: DTZ001
    return _utc(start, zone), _utc(end, zone)


def _utc(wall: datetime, zone: ZoneInfo) -> datetime:
    return wall.replace(tzinfo=zone).astimezone(ZoneInfo("UTC"))


def month_seconds(at: datetime, zone: ZoneInfo | None = None) -> int:
    start, end = month_bounds(at, zone)
    return int((end - start).total_seconds())


def unit_seconds(plan: str, at: datetime, zone: ZoneInfo | None = None) -> int:
    """Seconds in one unit of `plan` for a second at `at`."""
    if plan == "card_hour":
        return HOUR_SECONDS
    if plan == "server_month":
        return month_seconds(at, zone)
    if plan == "pflops_year":
        return YEAR_SECONDS
    raise ValueError(f"unknown plan {plan!r}")


@dataclass(frozen=True)
class Rated:
    quantity: Decimal  # in the plan's unit (card-hours, server-months, PFLOPS-years)
    amount: Decimal  # quantity x unit price, 12 decimal places


def rate(
    *, plan: str, seconds: Decimal, units: Decimal, unit_price: Decimal, at: datetime, zone: ZoneInfo | None = None
) -> Rated:
    """What `seconds` (billable, all inside one month) of one allocation held from `at` cost.

    `at` is where the held part starts (not its slot's hour), so that amounts telescope from slot to slot.
    """
    zone = zone or platform_zone()
    month_start, _month_end = month_bounds(at, zone)
    per = Decimal(unit_seconds(plan, at, zone))
    begin = _exact_seconds(at - month_start)
    end = begin + Decimal(seconds)
    # Wide enough that seconds x units x price is exact before the one division and rounding.
    with localcontext() as context:
        context.prec = 80

        def upto(instant: Decimal, factor: Decimal) -> Decimal:
            return (instant * factor / per).quantize(EXACT)

        quantity = upto(end, units) - upto(begin, units)
        amount = upto(end, units * unit_price) - upto(begin, units * unit_price)
    return Rated(quantity=quantity, amount=amount)


@dataclass(frozen=True)
class Estimated:
    duration: Decimal  # the plan's time: hours, server-months (each month's share of itself), years of 365 days
    amount: Decimal  # money, rounded once


def estimate(
    *,
    plan: str,
    unit_price: Decimal,
    units: Decimal,
    start: datetime,
    end: datetime,
    zone: ZoneInfo | None = None,
) -> Estimated:
    """What holding `units` (cards for card_hour, whole servers for server_month, PFLOPS for pflops_year) over
    [start, end) at `unit_price` will cost: rated as metering rates it, month by month, and rounded once.

    The one estimate of a price before a lease exists (the rent form's, the API's). An open-ended card-hour lease
    is estimated for one hour (end = start + 1 hour).
    """
    zone = zone or platform_zone()
    duration = amount = Decimal(0)
    cursor = start
    while cursor < end:
        part_end = min(end, month_bounds(cursor, zone)[1])
        seconds = _exact_seconds(part_end - cursor)
        held = rate(plan=plan, seconds=seconds, units=Decimal(1), unit_price=Decimal(0), at=cursor, zone=zone)
        cost = rate(plan=plan, seconds=seconds, units=units, unit_price=unit_price, at=cursor, zone=zone)
        duration += held.quantity
        amount += cost.amount
        cursor = part_end
    return Estimated(duration=duration, amount=to_money(amount))


def exact_seconds(delta: timedelta) -> Decimal:
    """A duration in seconds, exactly (to the microsecond)."""
    return _exact_seconds(delta)


def _exact_seconds(delta: timedelta) -> Decimal:
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


# Sums of usage amounts carry noise in the 12th place (each held stretch is rounded there at its two ends, and a
# card's share of a 3-card server is 1/3 rounded at the 18th). It is dropped first, at 10 places, so a price that
# ends in a half cent is not billed a cent short.
NOISE = Decimal("0.0000000001")


def to_money(amount: Decimal) -> Decimal:
    """The one rounding of money: half-up to the cent (after dropping noise below the 10th place)."""
    return Decimal(amount).quantize(NOISE).quantize(CENT, rounding=ROUND_HALF_UP)
