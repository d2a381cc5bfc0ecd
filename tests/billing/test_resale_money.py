"""Resale money (issue 20), as a property over random resale histories.

A broker holds two 2-card servers of two providers for the whole of March under server_month contracts and resells
their cards by the card-hour to three renters (two paying in USD, one in CNY). A history is any set of resale
leases starting, ending and resizing inside the held cards, at any second, with an outage on one server sometimes and
the broker's own take rate sometimes. After the month closes:

- the renters' invoices charge exactly the resold card-seconds at their leases' prices (less the down time);
- every resale usage record names the broker as its provider, and the broker's statement is the resale revenue less
  the commission at its take rate (the providers' rule), to the cent;
- the providers' statements are their contracts' usage alone, untouched by the resale;
- the reconciliation finds nothing wrong, and its resale figures add up: revenue = net + commission, margin = net -
  contract cost;
- the broker's book has held, resold and idle card-seconds and the same money.

A few examples run by default; many more under the slow marker (`-m slow`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import transaction
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import rating
from billing.broker import broker_book
from billing.invoicing import close_period
from billing.models import Invoice, InvoiceLine, ProviderStatement, ProviderTerms, UsageRecord
from billing.reconciliation import reconcile
from scheduler.models import Lease
from tests.billing.resale_support import (
    MONTH,
    SERVER_MONTH_PRICE,
    Segment,
    broker_world,
    resale_rows,
)
from tests.factories import ServerOutageFactory

D = Decimal
MONTH_SECONDS = 31 * 86400
PRICES = [D("2.5"), D("3.1"), D("4.75"), D("0.333333"), D("17")]


@st.composite
def histories(draw):
    """Segments per held card (at most three, never overlapping on a card), each in one of its server's three
    resale leases (one per renter); the leases' prices; an outage of server 0 or none; the broker's take rate."""
    segments = []
    for card in range(4):
        cursor = 0
        for _ in range(draw(st.integers(0, 3))):
            cursor += draw(st.integers(0, 9 * 86400))
            if cursor >= MONTH_SECONDS:
                break
            end = min(cursor + draw(st.integers(1, 4 * 86400)), MONTH_SECONDS)
            segments.append(Segment(card=card, start=cursor, end=end, lease=draw(st.integers(0, 2))))
            cursor = end
    prices = {(server, k): draw(st.sampled_from(PRICES)) for server in (0, 1) for k in range(3)}
    outage = draw(st.none() | st.tuples(st.integers(0, MONTH_SECONDS - 1), st.integers(1, 2 * 86400)))
    take = draw(st.sampled_from([None, D("0.1"), D("0.2575")]))
    return segments, prices, outage, take


def run(segments: list[Segment], prices: dict, outage: tuple[int, int] | None, take: Decimal | None) -> None:
    with transaction.atomic():
        check(segments, prices, outage, take)
        transaction.set_rollback(True)


def overlap(a: tuple[int, int], b: tuple[int, int] | None) -> int:
    if b is None:
        return 0
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def check(segments: list[Segment], prices: dict, outage: tuple[int, int] | None, take: Decimal | None) -> None:
    world = broker_world()
    if take is not None:
        ProviderTerms.objects.create(organization=world.broker, take_rate=take)
    rate = take if take is not None else D("0.15")
    down = None
    if outage is not None:
        down = (outage[0], min(outage[0] + outage[1], MONTH_SECONDS))
        ServerOutageFactory(
            server=world.servers[0],
            started_at=world.period.start + timedelta(seconds=down[0]),
            ended_at=world.period.start + timedelta(seconds=down[1]),
        )
    leases = resale_rows(world, segments, prices)
    with time_machine.travel(world.period.end + timedelta(hours=2), tick=False):
        close_period(MONTH)
        result = reconcile(MONTH, stripe_api=False)
        book = broker_book(org=world.broker, first=date(2026, 3, 1), last=date(2026, 3, 31))
    assert result.ok, [m.as_dict() for m in result.mismatches]

    # What each renter was charged for resold cards: the card-seconds held, less the down ones, at its price.
    expected: dict[str, Decimal] = defaultdict(Decimal)
    resold_seconds = 0
    for seg in segments:
        server = seg.card // 2
        renter = world.renters[seg.lease]
        charged = seg.end - seg.start - (overlap((seg.start, seg.end), down) if server == 0 else 0)
        expected[renter.currency] += prices[(server, seg.lease)] * charged / 3600
        resold_seconds += seg.end - seg.start
    resale = UsageRecord.objects.filter(allocation__backing__isnull=False)
    assert set(resale.values_list("provider_id", flat=True)) <= {world.broker.pk}
    revenue = {
        row["currency"]: row["a"] for row in resale.values("currency").annotate(a=Sum("amount")).order_by("currency")
    }
    assert set(revenue) == {c for c, v in expected.items() if v}
    for currency, amount in revenue.items():
        assert abs(amount - expected[currency]) < D("1e-9"), (currency, amount, expected[currency])
        # The renters' invoice lines for resale leases carry exactly those records.
        lines = InvoiceLine.objects.filter(
            invoice__period=MONTH, invoice__currency=currency, lease__in=[lease.pk for lease in leases.values()]
        )
        assert lines.aggregate(a=Sum("exact_amount"))["a"] == amount

    # The broker's statement, per currency: resale revenue less the commission at its take rate, to the cent.
    statements = {
        (s.organization_id, s.currency): s for s in ProviderStatement.objects.filter(period=MONTH).order_by("id")
    }
    for currency, amount in revenue.items():
        st_ = statements[(world.broker.pk, currency)]
        assert st_.gross == rating.to_money(amount)
        assert st_.take_rate == rate and st_.commission == rating.to_money(st_.gross * rate)
        assert st_.net + st_.commission + st_.credits == st_.gross
    # The providers' statements are their contracts' usage alone: resale changes nothing of them.
    for provider, contract in zip(world.providers, world.contracts, strict=True):
        st_ = statements[(provider.pk, "USD")]
        contract_usage = UsageRecord.objects.filter(lease=contract)
        assert set(contract_usage.values_list("provider_id", "organization_id").distinct()) == {
            (provider.pk, world.broker.pk)
        }
        assert st_.gross == rating.to_money(contract_usage.aggregate(a=Sum("amount"))["a"])
        if down is None or contract is not world.contracts[0]:
            assert st_.gross == SERVER_MONTH_PRICE
    # The broker is invoiced for its contracts whatever the resale earned.
    broker_invoice = Invoice.objects.get(organization=world.broker, period=MONTH)
    assert set(broker_invoice.lines.values_list("lease_id", flat=True)) == {c.pk for c in world.contracts}

    # The reconciliation's resale figures add up, per currency and per reseller.
    rows = {row["currency"]: row for row in result.resale if row["organization"] == world.broker.pk}
    for currency, row in rows.items():
        assert row["resale_revenue"] == rating.to_money(revenue.get(currency, D(0)))
        assert row["resale_revenue"] == row["resale_net"] + row["commission"]
        assert row["margin"] == row["resale_net"] - row["contract_cost"]
        totals = result.totals[currency]
        assert totals["resale_revenue"] == totals["resale_net"] + totals["resale_commission"]
    contract_cost = UsageRecord.objects.filter(lease__in=world.contracts).aggregate(a=Sum("amount"))["a"]
    assert rows["USD"]["contract_cost"] == rating.to_money(contract_cost)

    # The book: 4 cards held all month, the resold seconds, the same money.
    assert book.total.held_seconds == 4 * MONTH_SECONDS
    assert book.total.resold_seconds == resold_seconds
    assert book.total.idle_seconds == 4 * MONTH_SECONDS - resold_seconds
    assert sum(c.resold_seconds for c in book.contracts) == resold_seconds
    assert sum(d.resold_seconds for d in book.days) == resold_seconds and len(book.days) == 31
    for currency, amount in revenue.items():
        money = book.total.money[currency]
        assert money.revenue == rating.to_money(amount)
        assert money.commission == statements[(world.broker.pk, currency)].commission
    usd = book.total.money["USD"]
    assert usd.cost == rating.to_money(contract_cost)
    assert usd.margin == usd.net - usd.cost
    assert Lease.objects.filter(organization=world.broker).count() == 2


@pytest.mark.django_db
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
def test_resale_money_adds_up_to_the_cent(history):
    run(*history)


def test_a_history_with_every_kind_of_segment(db):
    """One fixed history, so each kind of step is exercised whatever hypothesis draws: a lease resized across both
    cards of a server, back-to-back leases on one card, a lease in CNY, an outage inside a resold stretch, a take rate
    of the broker's own."""
    day = 86400
    segments = [
        Segment(card=0, start=0, end=3 * day, lease=0),
        Segment(card=1, start=day, end=2 * day + 17, lease=0),  # lease 0 grows to 2 cards, then shrinks
        Segment(card=0, start=3 * day, end=5 * day + 1, lease=2),  # the next renter takes card 0 at once (CNY)
        Segment(card=2, start=10 * day + 3, end=10 * day + 3605, lease=1),
        Segment(card=3, start=30 * day, end=MONTH_SECONDS, lease=1),  # to the month's last second
    ]
    prices = {(server, k): PRICES[(server + k) % len(PRICES)] for server in (0, 1) for k in range(3)}
    run(segments, prices, (2 * day, 3600 * 5), D("0.1"))


@pytest.mark.slow
@pytest.mark.django_db
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories())
def test_resale_money_adds_up_over_many_histories(history):
    run(*history)
