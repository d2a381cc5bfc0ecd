"""Reads of billing that pages and the API share: a provider's statements with their payouts, what its cards
earned so far this month (gross, commission at its take rate, net: live, not only up to the last meter run), and
its totals paid and unpaid; a customer's spending this month per day and lease, and the funds notice its pages show.

Each takes the organisation and reads only its rows (`for_provider`, `scoped`), so it is safe while a request is
handled (accounts/tenancy.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Case, Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce, TruncDay

from accounts.models import Organization
from accounts.tenancy import scoped
from billing import rating
from billing.invoicing import period_containing, take_rate_of
from billing.metering import access_slots, metered_until, slots, storage_slots
from billing.models import (
    DATA_ACCESS,
    STORAGE,
    DataAccessRecord,
    FundsNotice,
    Payout,
    ProviderStatement,
    StorageRecord,
    UsageRecord,
)

_ZERO = Decimal(0)
# How long the banner says that leases were stopped for want of money.
STOPPED_NOTICE_DAYS = 7


@dataclass(frozen=True)
class MonthSoFar:
    currency: str
    gross: Decimal
    commission: Decimal
    net: Decimal
    card_hours: Decimal


def provider_statements(*, org: Organization) -> QuerySet[ProviderStatement]:
    """The organisation's statements, newest month first, each with its live payout's state, method, reference
    and payment time (a failed payout shows only while no other was made; a paid statement without a payout was
    settled before payouts were recorded, and its payout state reads paid)."""
    payouts = Payout.objects.filter(statement_id=OuterRef("pk")).order_by(
        Case(When(state=Payout.State.FAILED, then=Value(1)), default=Value(0), output_field=IntegerField()), "-id"
    )
    return (
        scoped(ProviderStatement, org)
        .annotate(
            payout_state=Coalesce(
                Subquery(payouts.values("state")[:1]),
                Case(When(state=ProviderStatement.State.PAID, then=Value(Payout.State.PAID))),
            ),
            payout_method=Subquery(payouts.values("method")[:1]),
            payout_reference=Subquery(payouts.values("reference")[:1]),
            payout_paid_at=Subquery(payouts.values("paid_at")[:1]),
        )
        .order_by("-period", "currency", "-id")
    )


def provider_statement_totals(*, org: Organization) -> list[dict[str, Any]]:
    """Per currency: the net of all the organisation's statements, how many months, how much was paid out and
    how much is still unpaid."""
    # Two queries, not one with a join on payouts: a statement with a failed and a paid payout counts once.
    paid = dict(
        scoped(ProviderStatement, org)
        .filter(payouts__state=Payout.State.PAID)
        .values("currency")
        .annotate(paid=Sum("net"))
        .values_list("currency", "paid")
    )
    return [
        {**row, "paid": paid.get(row["currency"], Decimal(0)), "unpaid": row["net"] - paid.get(row["currency"], 0)}
        for row in scoped(ProviderStatement, org)
        .values("currency")
        .annotate(net=Sum("net"), months=Count("id"))
        .order_by("currency")
    ]


def provider_month_so_far(*, org: Organization, now: datetime) -> list[MonthSoFar]:
    """What the organisation's cards and the volumes on its servers earned this month up to `now`, per currency:
    gross, the commission at its rate, and net before SLA charge-backs (known when the month is closed).

    Live: the usage records up to the meter's last run plus, rated the same way (metering.slots, Slot.rated), what
    its cards were held for since, as balances.unbilled does for the customer. Amounts are summed exact and
    rounded once per currency, so the gross is what the month's statement will say once the meter has caught up.
    """
    period = period_containing(now)
    watermark = metered_until()
    records = UsageRecord.objects.for_provider(org).filter(slot_start__gte=period.start, slot_start__lt=period.end)
    if watermark is not None:
        records = records.filter(slot_start__lt=watermark)
    # currency -> [exact gross, card seconds that count]
    sums: dict[str, list[Decimal]] = defaultdict(lambda: [_ZERO, _ZERO])
    rows = (
        records.values("currency")
        .annotate(gross=Sum("amount"), card_seconds=Sum("seconds") - Sum("down_seconds"))
        .order_by("currency")
    )
    for row in rows:
        sums[row["currency"]][0] += row["gross"] or _ZERO
        sums[row["currency"]][1] += row["card_seconds"] or _ZERO
    for model in (StorageRecord, DataAccessRecord):
        stored = model.objects.for_provider(org).filter(slot_start__gte=period.start, slot_start__lt=period.end)
        if watermark is not None:
            stored = stored.filter(slot_start__lt=watermark)
        for currency, amount in (
            stored.values("currency").annotate(a=Sum("amount")).order_by("currency").values_list("currency", "a")
        ):
            sums[currency][0] += amount or _ZERO
    since = max(watermark, period.start) if watermark is not None else period.start
    if since < now:
        for slot in slots(since=since, until=min(now, period.end), provider_id=org.pk):
            sums[slot.currency][0] += slot.rated().amount
            sums[slot.currency][1] += slot.seconds - slot.down_seconds
        for part in storage_slots(since=since, until=min(now, period.end), provider_id=org.pk):
            sums[part.currency][0] += part.rated().amount
        for session in access_slots(since=since, until=min(now, period.end), provider_id=org.pk):
            sums[session.currency][0] += session.rated().amount
    take = take_rate_of(org.pk)
    result = []
    for currency in sorted(sums):
        exact, card_seconds = sums[currency]
        gross = rating.to_money(exact)
        commission = rating.to_money(gross * take)
        card_hours = (card_seconds / Decimal(3600)).quantize(Decimal("0.01"))
        result.append(MonthSoFar(currency, gross, commission, gross - commission, card_hours))
    return result


# --- a customer's spending -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaySpend:
    """What one lease (or one volume's storage, plan `storage`) cost on one day of the platform's calendar (before
    tax; held time on a failed card is not in it, as on the invoice)."""

    day: date
    lease_id: int | None
    plan: str
    amount: Decimal
    currency: str
    volume_id: int | None = None
    data_access_id: int | None = None  # a data-access session's hours (plan `data_access`)


def spending_by_day(*, org: Organization, currency: str, now: datetime) -> list[DaySpend]:
    """The organisation's spending this month in `currency`, one row per day and lease (then per day and volume
    for storage), oldest day first.

    Its usage and storage records up to the meter's last run plus, as balances.unbilled does, the held slots since,
    rated by the meter's own code; each row is summed exact and rounded once (half-up), so rows can differ from the
    invoice's lines (rounded per lease and price) by a cent, and carry no tax.
    """
    zone = rating.platform_zone()
    period = period_containing(now)
    watermark = metered_until()

    def month(records):
        records = records.filter(currency=currency, slot_start__gte=period.start, slot_start__lt=period.end)
        if watermark is not None:
            records = records.filter(slot_start__lt=watermark)
        return records.annotate(day=TruncDay("slot_start", tzinfo=zone)).order_by()

    # (day, 0 for a lease, 1 for a volume or 2 for a data-access session, its id, plan) -> exact amount
    exact: dict[tuple[date, int, int, str], Decimal] = defaultdict(Decimal)
    for row in month(UsageRecord.objects.for_org(org)).values("day", "lease_id", "plan").annotate(a=Sum("amount")):
        exact[(row["day"].astimezone(zone).date(), 0, row["lease_id"], row["plan"])] += row["a"] or _ZERO
    for row in month(StorageRecord.objects.for_org(org)).values("day", "volume_id").annotate(a=Sum("amount")):
        exact[(row["day"].astimezone(zone).date(), 1, row["volume_id"], STORAGE)] += row["a"] or _ZERO
    for row in month(DataAccessRecord.objects.for_org(org)).values("day", "data_access_id").annotate(a=Sum("amount")):
        exact[(row["day"].astimezone(zone).date(), 2, row["data_access_id"], DATA_ACCESS)] += row["a"] or _ZERO
    since = max(watermark, period.start) if watermark is not None else period.start
    if since < now:
        until = min(now, period.end)
        for slot in slots(since=since, until=until, organization_id=org.pk):
            if slot.currency == currency:
                exact[(slot.start.astimezone(zone).date(), 0, slot.lease_id, slot.plan)] += slot.rated().amount
        for part in storage_slots(since=since, until=until, organization_id=org.pk):
            if part.currency == currency:
                exact[(part.start.astimezone(zone).date(), 1, part.volume_id, STORAGE)] += part.rated().amount
        for session in access_slots(since=since, until=until, organization_id=org.pk):
            if session.currency == currency:
                key = (session.start.astimezone(zone).date(), 2, session.data_access_id, DATA_ACCESS)
                exact[key] += session.rated().amount
    return [
        DaySpend(
            day=day,
            lease_id=None if what else pk,
            plan=plan,
            amount=rating.to_money(amount),
            currency=currency,
            volume_id=pk if what == 1 else None,
            data_access_id=pk if what == 2 else None,
        )
        for (day, what, pk, plan), amount in sorted(exact.items())
    ]


def funds_notice_shown(*, org: Organization, now: datetime) -> FundsNotice | None:
    """The notice the organisation's pages carry as a banner: its open low-balance notice, else leases stopped for
    want of money in the last STOPPED_NOTICE_DAYS days; None when neither. One query.

    The newest of them is the one to show: stopping resolves the open low notice, so an open one is always newer
    than any stop."""
    recent = now - timedelta(days=STOPPED_NOTICE_DAYS)
    return (
        FundsNotice.objects.for_org(org)
        .filter(
            Q(kind=FundsNotice.Kind.LOW, resolved_at__isnull=True)
            | Q(kind=FundsNotice.Kind.STOPPED, created_at__gte=recent)
        )
        .order_by("-created_at", "-id")
        .first()
    )
