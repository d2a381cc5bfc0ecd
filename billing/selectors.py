"""Reads of billing that pages and the API share: a provider's statements with their payouts, what its cards
earned so far this month (gross, commission at its take rate, net), and its totals paid and unpaid.

Each takes the organisation and reads only its rows (`for_provider`, `scoped`), so it is safe while a request is
handled (accounts/tenancy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Case, Count, IntegerField, OuterRef, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce

from accounts.models import Organization
from accounts.tenancy import scoped
from billing import rating
from billing.invoicing import period_containing, take_rate_of
from billing.models import Payout, ProviderStatement, UsageRecord


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
    """What the organisation's cards earned this month up to the last meter run, per currency: gross, the
    commission at its rate, and net before SLA charge-backs (known when the month is closed)."""
    period = period_containing(now)
    rows = (
        UsageRecord.objects.for_provider(org)
        .filter(slot_start__gte=period.start, slot_start__lt=period.end)
        .values("currency")
        .annotate(
            gross=Sum("amount"),
            card_seconds=Sum("seconds") - Sum("down_seconds"),
        )
        .order_by("currency")
    )
    take = take_rate_of(org.pk)
    result = []
    for row in rows:
        gross = rating.to_money(row["gross"] or Decimal(0))
        commission = rating.to_money(gross * take)
        card_hours = ((row["card_seconds"] or Decimal(0)) / Decimal(3600)).quantize(Decimal("0.01"))
        result.append(MonthSoFar(row["currency"], gross, commission, gross - commission, card_hours))
    return result
