"""A broker's book (issue 20): what an organisation holds under its contracts and what reselling it earns, by day.

An organisation that holds capacity through contracts (`server_month`, `pflops_year` leases) may resell it
(scheduler.models.Resale): a renter's lease on a resale offer holds the same cards inside the contract's allocations
(`Allocation.backing`). The book reads, for days [first, last] of the platform time zone:

- held: the card-seconds the organisation's contracts held (their allocations, up to now);
- resold: the card-seconds of those cards held by renters' resale leases (allocations whose `backing` is one of
  them); the resold share is resold / held; idle is held - resold (held cards no renter holds, whether or not the
  organisation runs its own work on them);
- money, from the usage records the meter wrote (up to `metered_until`): resale revenue (the renters' charge for
  resold cards, whose records name the reseller as provider: billing/metering.py), the platform's commission at the
  reseller's take rate (ProviderTerms, else SUANLI_TAKE_RATE: the rule of provider statements), the net, the
  contract cost (the contract's own records, billed to the reseller at the contract price whatever the resale
  earns) and the margin (net - cost). Money is per currency: a renter's lease is priced in the renter's currency.

Per contract and per day, with totals. Reads only the organisation's own rows (raw SQL filtered by it, and usage
records through `for_org` / `for_provider`), so it is safe while a request is handled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.errors import InvalidInput
from accounts.inputs import EARLIEST, LATEST
from accounts.models import Organization
from billing import rating
from billing.invoicing import take_rate_of
from billing.metering import metered_until
from billing.models import UsageRecord
from scheduler.models import Lease, Plan

CONTRACT_PLANS = (Plan.SERVER_MONTH, Plan.PFLOPS_YEAR)
# The longest range one book covers (a quarter and a day): each day is a row.
MAX_DAYS = 93
_ZERO = Decimal(0)

# Card-seconds per contract and day: what its allocations held (the card's holder, `backing` NULL) and what renters'
# resale allocations backed by them held, each cut at now and at the day's bounds (platform time zone).
_CARD_SECONDS_SQL = """
WITH d AS (
    SELECT n, tstzrange(lo, hi, '[)') AS r
    FROM unnest(%(los)s::timestamptz[], %(his)s::timestamptz[]) WITH ORDINALITY AS d(lo, hi, n)
),
held AS (
    SELECT al.id, al.lease_id, al.gpu_id, al.period * tstzrange(%(since)s, %(until)s, '[)') AS p
    FROM scheduler_allocation al
    JOIN scheduler_lease l ON l.id = al.lease_id
    WHERE l.organization_id = %(org)s AND l.plan IN ('server_month', 'pflops_year') AND al.backing_id IS NULL
      AND al.period && tstzrange(%(since)s, %(until)s, '[)')
),
resold AS (
    SELECT h.lease_id, r.period * h.p AS p
    FROM scheduler_allocation r
    JOIN held h ON h.id = r.backing_id
    WHERE r.period && tstzrange(%(since)s, %(until)s, '[)')
),
parts AS (
    SELECT 'held' AS kind, held.lease_id, d.n, held.p * d.r AS x FROM held JOIN d ON held.p && d.r
    UNION ALL
    SELECT 'resold', resold.lease_id, d.n, resold.p * d.r FROM resold JOIN d ON resold.p && d.r
)
SELECT kind, lease_id, n, sum(extract(epoch FROM upper(x) - lower(x)))
FROM parts
WHERE NOT isempty(x)
GROUP BY kind, lease_id, n
"""


@dataclass
class Money:
    """One currency's figures: resale revenue (exact until `rounded`), commission, net, contract cost, margin."""

    currency: str
    revenue: Decimal = _ZERO
    cost: Decimal = _ZERO
    commission: Decimal = _ZERO
    net: Decimal = _ZERO
    margin: Decimal = _ZERO

    def settle(self, take_rate: Decimal) -> Money:
        """Round once: revenue and cost to money, the commission at `take_rate` of the revenue, net, margin."""
        self.revenue = rating.to_money(self.revenue)
        self.cost = rating.to_money(self.cost)
        self.commission = rating.to_money(self.revenue * take_rate)
        self.net = self.revenue - self.commission
        self.margin = self.net - self.cost
        return self


@dataclass
class Line:
    """A contract's or a day's card-seconds and money (per currency)."""

    held_seconds: Decimal = _ZERO
    resold_seconds: Decimal = _ZERO
    money: dict[str, Money] = field(default_factory=dict)

    @property
    def idle_seconds(self) -> Decimal:
        return self.held_seconds - self.resold_seconds

    @property
    def resold_share(self) -> Decimal | None:
        """Resold / held, to four places (None when nothing was held)."""
        if not self.held_seconds:
            return None
        return (self.resold_seconds / self.held_seconds).quantize(Decimal("0.0001"))

    def of(self, currency: str) -> Money:
        return self.money.setdefault(currency, Money(currency))

    def monies(self) -> list[Money]:
        return [self.money[c] for c in sorted(self.money)]


@dataclass
class ContractLine(Line):
    lease: Lease | None = None
    cards: int = 0


@dataclass
class DayLine(Line):
    day: date | None = None
    seconds: Decimal = _ZERO  # how much of the day has passed (a day still running counts up to now)

    def cards(self, seconds: Decimal) -> Decimal:
        """Card-seconds as the mean number of cards over the part of the day that has passed."""
        return (seconds / self.seconds).quantize(Decimal("0.01")) if self.seconds else _ZERO

    @property
    def held_cards(self) -> Decimal:
        return self.cards(self.held_seconds)

    @property
    def resold_cards(self) -> Decimal:
        return self.cards(self.resold_seconds)

    @property
    def idle_cards(self) -> Decimal:
        return self.cards(self.idle_seconds)


@dataclass
class Book:
    first: date
    last: date
    take_rate: Decimal
    contracts: list[ContractLine]
    days: list[DayLine]
    total: Line
    metered_until: datetime | None
    as_of: datetime
    time_zone: str

    @property
    def holds_contracts(self) -> bool:
        return bool(self.contracts)


def book_range(first: date | None, last: date | None, *, now: datetime) -> tuple[date, date]:
    """The days a book covers: [first, last], by default the month so far (platform time zone); a 400 for a range
    that is backwards, longer than MAX_DAYS or outside the platform's calendar."""
    today = now.astimezone(rating.platform_zone()).date()
    if first is None and last is None:
        first, last = today.replace(day=1), today
    elif first is None:
        first = last.replace(day=1)
    elif last is None:
        last = min(today, first + timedelta(days=MAX_DAYS - 1)) if first <= today else first
    for name, value in (("from", first), ("to", last)):
        if not EARLIEST.date() <= value < LATEST.date() - timedelta(days=1):
            message = f"A day from {EARLIEST:%Y-%m-%d} to {LATEST - timedelta(days=2):%Y-%m-%d}."
            raise InvalidInput(message, fields={name: [message]})
    if last < first:
        raise InvalidInput("to is before from.", fields={"to": ["On or after from."]})
    if (last - first).days + 1 > MAX_DAYS:
        message = f"At most {MAX_DAYS} days."
        raise InvalidInput(message, fields={"to": [message]})
    return first, last


def _day_bounds(first: date, last: date) -> list[tuple[date, datetime, datetime]]:
    """Each day of [first, last] with its bounds in the platform time zone, as aware instants."""
    zone = rating.platform_zone()
    days = []
    day = first
    while day <= last:
        lo = datetime(day.year, day.month, day.day, tzinfo=zone)
        after = day + timedelta(days=1)
        hi = datetime(after.year, after.month, after.day, tzinfo=zone)
        days.append((day, lo, hi))
        day = after
    return days


def broker_book(*, org: Organization, first: date | None = None, last: date | None = None, now=None) -> Book:
    """The organisation's book over days [first, last] (default: this month so far). Reads only its own rows."""
    now = now or timezone.now()
    first, last = book_range(first, last, now=now)
    bounds = _day_bounds(first, last)
    since, until = bounds[0][1], bounds[-1][2]
    days = [DayLine(day=day, seconds=_seconds(max(lo, min(hi, now)) - lo)) for day, lo, hi in bounds]
    held = (
        Lease.objects.for_org(org)
        .filter(
            plan__in=CONTRACT_PLANS,
            allocations__period__overlap=DateTimeTZRange(since, until),
            allocations__backing__isnull=True,
        )
        .values("pk")
        .annotate(cards=Count("allocations__gpu", distinct=True))
        .order_by("pk")
    )
    cards = {row["pk"]: row["cards"] for row in held}
    leases = Lease.objects.for_org(org).filter(pk__in=list(cards)).order_by("pk")
    contracts = {lease.pk: ContractLine(lease=lease, cards=cards[lease.pk]) for lease in leases}
    total = Line()
    with connection.cursor() as cursor:
        cursor.execute(
            _CARD_SECONDS_SQL,
            {
                "org": org.pk,
                "since": since,
                "until": max(since, min(until, now)),
                "los": [lo for _, lo, _ in bounds],
                "his": [hi for _, _, hi in bounds],
            },
        )
        for kind, lease_id, n, seconds in cursor.fetchall():
            seconds = Decimal(seconds).quantize(Decimal("0.000001"))
            for line in (contracts[lease_id], days[n - 1], total):
                if kind == "held":
                    line.held_seconds += seconds
                else:
                    line.resold_seconds += seconds
    _add_money(org, since, until, contracts, days, total, first)
    take = take_rate_of(org.pk)
    for line in [*contracts.values(), *days, total]:
        for money in line.money.values():
            money.settle(take)
    return Book(
        first=first,
        last=last,
        take_rate=take,
        contracts=list(contracts.values()),
        days=days,
        total=total,
        metered_until=metered_until(),
        as_of=now,
        time_zone=rating.platform_zone().key,
    )


def _seconds(delta: timedelta) -> Decimal:
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


def _add_money(
    org: Organization,
    since: datetime,
    until: datetime,
    contracts: dict[int, ContractLine],
    days: list[DayLine],
    total: Line,
    first: date,
) -> None:
    """The metered money of [since, until): resale revenue (records of allocations backed by the organisation's
    contracts, the organisation their provider) and contract cost (the contracts' own records), exact."""
    zone = rating.platform_zone()
    window = {"slot_start__gte": since, "slot_start__lt": until}
    revenue = (
        UsageRecord.objects.for_provider(org)
        .filter(allocation__backing__lease__organization=org, **window)
        .values("currency", contract=F("allocation__backing__lease_id"), day=TruncDate("slot_start", tzinfo=zone))
        .annotate(a=Sum("amount"))
        .order_by()
    )
    cost = (
        UsageRecord.objects.for_org(org)
        .filter(lease_id__in=list(contracts), allocation__backing__isnull=True, **window)
        .values("currency", contract=F("lease_id"), day=TruncDate("slot_start", tzinfo=zone))
        .annotate(a=Sum("amount"))
        .order_by()
    )
    for rows, name in ((revenue, "revenue"), (cost, "cost")):
        for row in rows:
            lines: list[Line] = [days[(row["day"] - first).days], total]
            if row["contract"] in contracts:
                lines.append(contracts[row["contract"]])
            for line in lines:
                money = line.of(row["currency"])
                setattr(money, name, getattr(money, name) + row["a"])


def holds_contracts(org: Organization | None) -> bool:
    """Whether the organisation has ever held capacity under a contract (the dashboard links its book then)."""
    if org is None:
        return False
    return Lease.objects.for_org(org).filter(plan__in=CONTRACT_PLANS).exclude(state="cancelled").exists()


def book_as_dict(book: Book) -> dict:
    """The API's answer (GET /api/v1/broker/book/)."""

    def money(line: Line) -> list[dict]:
        return [
            {
                "currency": m.currency,
                "resale_revenue": m.revenue,
                "commission": m.commission,
                "resale_net": m.net,
                "contract_cost": m.cost,
                "margin": m.margin,
            }
            for m in line.monies()
        ]

    def seconds(line: Line) -> dict:
        return {
            "held_card_seconds": line.held_seconds,
            "resold_card_seconds": line.resold_seconds,
            "idle_card_seconds": line.idle_seconds,
            "resold_share": line.resold_share,
        }

    return {
        "from": book.first,
        "to": book.last,
        "time_zone": book.time_zone,
        "take_rate": book.take_rate,
        "metered_until": book.metered_until,
        "as_of": book.as_of,
        "totals": {**seconds(book.total), "money": money(book.total)},
        "contracts": [
            {
                "lease": c.lease.pk,
                "plan": c.lease.plan,
                "state": c.lease.state,
                "start_at": c.lease.start_at,
                "end_at": c.lease.end_at,
                "cards": c.cards,
                **seconds(c),
                "money": money(c),
            }
            for c in book.contracts
        ],
        "days": [
            {
                "date": d.day,
                "held_cards": d.held_cards,
                "resold_cards": d.resold_cards,
                "idle_cards": d.idle_cards,
                **seconds(d),
                "money": money(d),
            }
            for d in book.days
        ],
    }
