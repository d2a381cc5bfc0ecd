"""Rating: what held seconds cost under each plan. Pure functions, no database (tested with hypothesis).

- `card_hour`: price per card per hour, per second held.
- `server_month`: price per whole server per calendar month (platform time zone), pro-rated over the seconds of
  the month in which the second falls; each card carries 1/gpu_count of its server (`units`).
- `pflops_year`: price per PFLOPS per year of 365 days; each card carries its share of the contracted PFLOPS
  (`units`), so capacity delivered beyond the contract is not charged and a lost card's share is not either.

A usage amount keeps 12 decimal places; money is rounded once, half-up to the cent, where a line is made
(`to_money`). Every function takes the seconds already net of down time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
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
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    # Build both from wall-clock fields in the zone so a DST change inside the month is counted right.
    return _utc(start.replace(tzinfo=None), zone), _utc(end.replace(tzinfo=None), zone)


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
    """What `seconds` (billable, all inside one month) of one allocation at `at` cost."""
    per = Decimal(unit_seconds(plan, at, zone))
    quantity = Decimal(seconds) * units / per
    return Rated(quantity=quantity.quantize(EXACT), amount=(quantity * unit_price).quantize(EXACT))


def to_money(amount: Decimal) -> Decimal:
    """The one rounding of money: half-up to the cent."""
    return Decimal(amount).quantize(CENT, rounding=ROUND_HALF_UP)
