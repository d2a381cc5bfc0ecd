"""Balances: what an organisation has paid in, may still spend, has spent this month and burns an hour (reads).

    available = paid in + credit limit - invoiced and unpaid - metered not yet invoiced - running not yet metered

Each term comes from the rows invoices come from, through the code that makes them, so there is no second ledger
to drift: *paid in* is the sum of the organisation's BalanceEntry rows (top-ups, bank transfers, adjustments,
refunds, disputes, invoices settled from it); *invoiced and unpaid* the amount due of its open invoices; the last
two are, for every month not invoiced yet, the invoice that month would get if it closed now: its usage records
plus, rated by the meter's own query (metering.slots), what was held since the meter last ran, cut into the same
lines and rounded, credited and taxed by invoicing.line_amounts and invoicing.totals. A month's spending shown
here is its invoice to the cent once it closes.

Storage (issue 16) counts the same way: the month's storage records plus what each volume held since the meter
last ran (metering.storage_slots), one invoice line per volume and price, never credited for SLA.
Data-access sessions too (metering.access_slots, one line per session and price per hour), and each open session
burns its price per hour.

`burn_per_hour` is what the organisation's active leases cost for the next hour at their cards' prices, plus each
volume not wiped yet (it is billed until its data is destroyed, in grace too), and `runs_out_at` when `available`
reaches zero at that rate. A postpaid organisation without a credit limit has no
`available` (None): nothing is refused or stopped for money (billing/terms.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import F, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from accounts.models import Organization
from billing import rating
from billing.invoicing import line_amounts, period_of, totals
from billing.metering import ACCESS_PLAN, STORAGE_PLAN, access_slots, metered_until, slots, storage_slots
from billing.models import (
    DATA_ACCESS,
    STORAGE,
    BalanceEntry,
    CreditNote,
    DataAccessRecord,
    Invoice,
    SpendLimit,
    StorageRecord,
    UsageRecord,
)
from billing.terms import Terms, terms_of
from scheduler.models import Allocation, LeaseState
from workloads.models import DataAccess, Volume

HOUR = timedelta(hours=1)
_ZERO = Decimal(0)


def paid_in(org: Organization, currency: str) -> Decimal:
    """The sum of the organisation's ledger in `currency`."""
    total = BalanceEntry.objects.for_org(org).filter(currency=currency).aggregate(t=Sum("amount"))["t"]
    return total or _ZERO


def unpaid(org: Organization, currency: str) -> Decimal:
    """What its open invoices still ask: their totals less their credit notes."""
    open_invoices = Invoice.objects.for_org(org).filter(currency=currency, state=Invoice.State.OPEN)
    billed = open_invoices.aggregate(t=Sum("total"))["t"] or _ZERO
    credited = (
        CreditNote.objects.for_org(org).filter(invoice__in=open_invoices).aggregate(t=Sum("amount"))["t"] or _ZERO
    )
    return billed - credited


@dataclass
class MonthSpend:
    """A month not invoiced yet, as its invoice would be now: `total` (after SLA credits and tax), each lease's
    and each volume's share of its subtotal, and its days' spending (for the chart)."""

    period: str
    total: Decimal = _ZERO
    per_lease: dict[int, Decimal] = field(default_factory=dict)
    daily: dict[date, Decimal] = field(default_factory=dict)
    per_volume: dict[int, Decimal] = field(default_factory=dict)
    per_access: dict[int, Decimal] = field(default_factory=dict)


def _label(at: datetime) -> str:
    local = at.astimezone(rating.platform_zone())
    return f"{local.year:04d}-{local.month:02d}"


def unbilled(org: Organization, currency: str, now: datetime) -> list[MonthSpend]:
    """Every month with usage or storage after the organisation's last invoice, oldest first, as invoiced if
    closed now."""
    zone = rating.platform_zone()
    last = (
        Invoice.objects.for_org(org)
        .filter(currency=currency)
        .exclude(state=Invoice.State.DRAFT)
        .order_by("-period")
        .values_list("period", flat=True)
        .first()
    )
    since = period_of(last).end if last else None
    watermark = metered_until()

    def metered(records):
        records = records.filter(currency=currency)
        if since is not None:
            records = records.filter(slot_start__gte=since)
        if watermark is not None:
            records = records.filter(slot_start__lt=watermark)
        return records.annotate(day=TruncDay("slot_start", tzinfo=zone)).order_by()

    # (month, what, id, plan, unit price) -> summed exact amount, seconds, down seconds: an invoice line each,
    # `what` being "lease" or "volume".
    lines: dict[tuple[str, str, int, str, Decimal], list[Decimal]] = defaultdict(lambda: [_ZERO, _ZERO, _ZERO])
    days: dict[tuple[str, date], Decimal] = defaultdict(Decimal)

    def add(at: datetime, key: tuple[str, int, str, Decimal], amount: Decimal, s: Decimal, d: Decimal) -> None:
        month = _label(at)
        line = lines[(month, *key)]
        line[0] += amount
        line[1] += s
        line[2] += d
        days[(month, at.astimezone(zone).date())] += amount

    rows = (
        metered(UsageRecord.objects.for_org(org))
        .values("day", "lease_id", "plan", "unit_price")
        .annotate(a=Sum("amount"), s=Sum("seconds"), d=Sum("down_seconds"))
    )
    for row in rows:
        add(row["day"], ("lease", row["lease_id"], row["plan"], row["unit_price"]), row["a"], row["s"], row["d"])
    stored = (
        metered(StorageRecord.objects.for_org(org))
        .values("day", "volume_id", "unit_price")
        .annotate(a=Sum("amount"), s=Sum("seconds"))
    )
    for row in stored:
        add(row["day"], ("volume", row["volume_id"], STORAGE, row["unit_price"]), row["a"], row["s"], _ZERO)
    accessed = (
        metered(DataAccessRecord.objects.for_org(org))
        .values("day", "data_access_id", "unit_price")
        .annotate(a=Sum("amount"), s=Sum("seconds"))
    )
    for row in accessed:
        key = ("access", row["data_access_id"], DATA_ACCESS, row["unit_price"])
        add(row["day"], key, row["a"], row["s"], _ZERO)
    start = max(filter(None, [watermark, since]), default=None)
    for slot in slots(since=start or org.created_at - HOUR, until=now, organization_id=org.pk):
        if slot.currency == currency and (since is None or slot.slot_start >= since):
            rated = slot.rated()
            key = ("lease", slot.lease_id, slot.plan, slot.unit_price)
            add(slot.start, key, rated.amount, slot.seconds, slot.down_seconds)
    for part in storage_slots(since=start or org.created_at - HOUR, until=now, organization_id=org.pk):
        if part.currency == currency and (since is None or part.slot_start >= since):
            key = ("volume", part.volume_id, STORAGE, part.unit_price)
            add(part.start, key, part.rated().amount, part.seconds, _ZERO)
    for part in access_slots(since=start or org.created_at - HOUR, until=now, organization_id=org.pk):
        if part.currency == currency and (since is None or part.slot_start >= since):
            key = ("access", part.data_access_id, DATA_ACCESS, part.unit_price)
            add(part.start, key, part.rated().amount, part.seconds, _ZERO)
    months: dict[str, MonthSpend] = {}
    amounts: dict[str, list[tuple[Decimal, Decimal]]] = defaultdict(list)
    for (month, what, pk, _plan, _price), (a, s, d) in lines.items():
        spend = months.setdefault(month, MonthSpend(period=month))
        if what == "lease":
            amount, credit = line_amounts({"a": a, "s": s, "d": d})
            spend.per_lease[pk] = spend.per_lease.get(pk, _ZERO) + amount
        elif what == "volume":  # storage: rounded like its invoice line, never credited
            amount, credit = rating.to_money(a), _ZERO
            spend.per_volume[pk] = spend.per_volume.get(pk, _ZERO) + amount
        else:  # a data-access session: likewise
            amount, credit = rating.to_money(a), _ZERO
            spend.per_access[pk] = spend.per_access.get(pk, _ZERO) + amount
        amounts[month].append((amount, credit))
    for month, spend in months.items():
        spend.total = totals(amounts[month]).total
        spend.daily = {day: rating.to_money(a) for (m, day), a in sorted(days.items()) if m == month}
    return [months[m] for m in sorted(months)]


def burn(org: Organization, now: datetime, *, exclude: Iterable[int] = ()) -> dict[int, Decimal]:
    """What each active lease of the organisation costs for the next hour at its held cards' prices (lease ->
    amount), leaving out the allocations `exclude` names.

    A card counts if it is held at any time in that hour, not only at `now`: a request admitted a moment later
    (concurrent requests each take their own `now`, and are admitted in the order they get the organisation's
    lock, not of their clocks) holds its cards from a little after `now`, and is running all the same."""
    rows = (
        Allocation.objects.for_org(org)
        .filter(period__overlap=(now, now + HOUR), lease__state=LeaseState.ACTIVE)
        .exclude(pk__in=list(exclude))
        .values("lease_id", "lease__plan")
        .annotate(rate=Sum(F("unit_price") * F("units")))
        .order_by()
    )
    return {
        row["lease_id"]: rating.estimate(
            plan=row["lease__plan"], unit_price=row["rate"], units=Decimal(1), start=now, end=now + HOUR
        ).amount
        for row in rows
    }


def storage_burn(org: Organization, now: datetime) -> dict[int, Decimal]:
    """What each of the organisation's volumes not wiped yet costs for the next hour (volume -> amount): its size
    at its price per GB-month, rated like its storage records (a volume in grace or being wiped is still billed)."""
    rows = (
        Volume.objects.for_org(org)
        .filter(wiped_at__isnull=True, created_at__lt=now + HOUR)
        .values_list("pk", "size_gb", "price_per_gb_month")
        .order_by("pk")
    )
    return {
        pk: rating.estimate(
            plan=STORAGE_PLAN, unit_price=price, units=Decimal(size_gb), start=now, end=now + HOUR
        ).amount
        for pk, size_gb, price in rows
    }


def access_burn(org: Organization, now: datetime) -> dict[int, Decimal]:
    """What each of the organisation's open data-access sessions costs for the next hour (session -> amount), at
    most up to its `ends_at`; one whose container has not run yet counts all the same (it is about to)."""
    rows = (
        DataAccess.objects.for_org(org)
        .filter(state=DataAccess.State.OPEN, ends_at__gt=now)
        .values_list("pk", "price_per_hour", "ends_at")
        .order_by("pk")
    )
    return {
        pk: rating.estimate(
            plan=ACCESS_PLAN, unit_price=price, units=Decimal(1), start=now, end=min(ends_at, now + HOUR)
        ).amount
        for pk, price, ends_at in rows
    }


@dataclass(frozen=True)
class Standing:
    """An organisation's money now (the balance page and GET /api/v1/balance/)."""

    terms: Terms
    currency: str
    balance: Decimal  # paid in
    unpaid: Decimal
    unbilled: list[MonthSpend]
    available: Decimal | None
    month_to_date: Decimal
    burn_per_lease: dict[int, Decimal]
    monthly_cap: Decimal | None
    as_of: datetime
    burn_per_volume: dict[int, Decimal] = field(default_factory=dict)
    burn_per_access: dict[int, Decimal] = field(default_factory=dict)

    @property
    def burn_per_hour(self) -> Decimal:
        return (
            sum(self.burn_per_lease.values(), _ZERO)
            + sum(self.burn_per_volume.values(), _ZERO)
            + sum(self.burn_per_access.values(), _ZERO)
        )

    @property
    def runs_out_at(self) -> datetime | None:
        """When `available` reaches zero at the current burn (now if it has); None if it never does."""
        if self.available is None:
            return None
        if self.available <= 0:
            return self.as_of
        if self.burn_per_hour <= 0:
            return None
        return self.as_of + timedelta(hours=float(self.available / self.burn_per_hour))

    @property
    def this_month(self) -> MonthSpend:
        label = _label(self.as_of)
        return next((m for m in self.unbilled if m.period == label), MonthSpend(period=label))


def standing(org: Organization, *, now: datetime | None = None, exclude: Iterable[int] = ()) -> Standing:
    """The organisation's money at `now` (see the module's formula); `exclude` leaves allocations out of the burn."""
    now = now or timezone.now()
    terms = terms_of(org)
    currency = terms.currency
    balance = paid_in(org, currency)
    owed = unpaid(org, currency)
    months = unbilled(org, currency, now)
    available = None
    if terms.credit_limit is not None:
        available = balance + terms.credit_limit - owed - sum((m.total for m in months), _ZERO)
    label = _label(now)
    cap = SpendLimit.objects.for_org(org).values_list("monthly_cap", flat=True).first()
    return Standing(
        terms=terms,
        currency=currency,
        balance=balance,
        unpaid=owed,
        unbilled=months,
        available=available,
        month_to_date=next((m.total for m in months if m.period == label), _ZERO),
        burn_per_lease=burn(org, now, exclude=exclude),
        monthly_cap=cap,
        as_of=now,
        burn_per_volume=storage_burn(org, now),
        burn_per_access=access_burn(org, now),
    )
