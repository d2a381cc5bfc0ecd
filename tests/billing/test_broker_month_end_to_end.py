"""A broker's month, end to end through the services (issue 20's proof, money side).

A broker holds two 4-card servers by the month from two providers (12,000.00 a server-month each) and publishes a
resale offer on each contract (scheduler/resale.py): one by the card-hour at 4.00 (interruptible 2.00), one lending
its cards back interruptibly only, at 2.50. Three customers rent through them: the first two cards for two days, the
second one card grown to two (a resize inside the held cards) for eight days, the third three cards interruptibly
until the broker takes them back (resale_reclaim: the usual preemption notice, then run_leases preempts it). The
month closes (`close_period`):

- each renter's invoice is its resold card-seconds at its lease's price, to the cent;
- the broker's invoice is its two contracts, 24,000.00, whatever the resale earned;
- each provider's statement is its contract alone (12,000.00 less 15 %), unchanged by the resale;
- the broker's statement is the resale revenue less the platform's 15 %, beside its invoice;
- the reconciliation finds nothing wrong, and its resale figures and the broker's book agree with all of it;
- and the money adds up: what the renters and the broker are invoiced is what the providers and the broker are paid
  plus the platform's commission, to the cent.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import override_settings

from billing import rating
from billing.broker import broker_book
from billing.invoicing import close_period, period_of
from billing.models import Invoice, ProviderStatement, UsageRecord
from billing.reconciliation import reconcile
from scheduler import resale, services
from scheduler.lifecycle import leases_run
from scheduler.models import Lease, LeaseState
from tests.factories import OrganizationFactory, ProviderFactory, online_server

D = Decimal
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
NOTICE = 300  # seconds of preemption notice

pytestmark = pytest.mark.django_db


@override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=NOTICE, SUANLI_TAX_RATE=D(0), SUANLI_TAKE_RATE=D("0.15"))
def test_a_broker_s_month_closes_with_invoices_statements_and_reconciliation_adding_up_to_the_cent():
    month = period_of("2026-03")
    t0 = month.start
    providers = [ProviderFactory(name=f"IDC {n}", currency="USD") for n in (1, 2)]
    servers = [
        online_server(gpus=4, organization=p, offer={"server_month_price": D("12000.0000")}, name=f"idc-{n}")
        for n, p in enumerate(providers)
    ]
    broker = OrganizationFactory(name="Broker Ltd", currency="USD")
    renters = [OrganizationFactory(name=f"Customer {n}", currency="USD") for n in (1, 2, 3)]

    with time_machine.travel(t0, tick=False) as clock:
        contracts = [
            services.lease_create(org=broker, plan="server_month", servers=1, server=s, end_at=month.end)
            for s in servers
        ]
        by_hour = resale.resale_offer_create(
            org=broker,
            lease=contracts[0],
            prices={"card_hour": D("4.00")},
            interruptible_prices={"card_hour": D("2.00")},
        )
        lent_back = resale.resale_offer_create(
            org=broker,
            lease=contracts[1],
            prices={},
            interruptible_prices={"card_hour": D("2.50")},
            interruptible_only=True,
        )

        clock.move_to(t0 + DAY)
        first = services.lease_create(org=renters[0], plan="card_hour", gpu_count=2, offer=by_hour)
        clock.move_to(t0 + 2 * DAY)
        second = services.lease_create(org=renters[1], plan="card_hour", gpu_count=1, offer=by_hour)
        clock.move_to(t0 + 2 * DAY + 12 * HOUR)
        services.lease_resize(lease=second, gpu_count=2)  # grows inside the contract's free cards
        clock.move_to(t0 + 3 * DAY)
        services.lease_end(lease=first)
        clock.move_to(t0 + 5 * DAY)
        third = services.lease_create(
            org=renters[2], plan="card_hour", gpu_count=3, offer=lent_back, interruptible=True
        )
        clock.move_to(t0 + 6 * DAY)
        taken = resale.resale_reclaim(offer=lent_back, gpu_count=3)  # the broker wants its cards back
        assert taken.leases == [third.pk] and taken.effective_at == t0 + 6 * DAY + timedelta(seconds=NOTICE)
        clock.move_to(taken.effective_at + timedelta(seconds=30))
        leases_run()
        third.refresh_from_db()
        assert third.state == LeaseState.PREEMPTED
        clock.move_to(t0 + 10 * DAY)
        services.lease_end(lease=second)

        # Every resale allocation lies inside a contract allocation of the same card.
        resold = [a for lease in (first, second, third) for a in lease.allocations.all()]
        assert all(a.backing is not None and a.backing.gpu_id == a.gpu_id for a in resold)
        assert {a.backing.lease_id for a in resold} == {c.pk for c in contracts}

        clock.move_to(month.end + HOUR)
        close_period(month.label)
        result = reconcile(month.label, stripe_api=False)
        book = broker_book(org=broker, first=date(2026, 3, 1), last=date(2026, 3, 31))

    assert result.ok, [m.as_dict() for m in result.mismatches]

    # Renters: the card-hours they held at their prices.
    reclaimed_hours = 24 + D(NOTICE) / 3600
    expected = {
        renters[0].pk: D("4.00") * 2 * 48,  # 384.00
        renters[1].pk: D("4.00") * (12 + 2 * 180),  # one card for 12 h, then two for 7.5 days: 1,488.00
        renters[2].pk: rating.to_money(D("2.50") * 3 * reclaimed_hours),  # until the notice ran out: 180.63
    }
    invoices = {i.organization_id: i for i in Invoice.objects.filter(period=month.label)}
    for renter in renters:
        assert invoices[renter.pk].total == expected[renter.pk], renter
    # The broker pays its contracts whatever the resale earned.
    assert invoices[broker.pk].total == D("24000.00")
    assert sorted(invoices[broker.pk].lines.values_list("lease_id", flat=True)) == sorted(c.pk for c in contracts)

    statements = {s.organization_id: s for s in ProviderStatement.objects.filter(period=month.label)}
    assert set(statements) == {providers[0].pk, providers[1].pk, broker.pk}
    for provider in providers:  # the contract alone, untouched by the resale
        st = statements[provider.pk]
        assert (st.gross, st.commission, st.net) == (D("12000.00"), D("1800.00"), D("10200.00"))
    revenue = sum(expected.values())  # 2,052.63
    st = statements[broker.pk]
    assert (st.gross, st.commission, st.credits) == (revenue, rating.to_money(revenue * D("0.15")), D(0))
    assert st.net == revenue - st.commission
    assert set(UsageRecord.objects.filter(lease__in=[first, second, third]).values_list("provider_id", flat=True)) == {
        broker.pk
    }

    # The money adds up, to the cent: invoiced = paid out + commission.
    invoiced = sum(i.total for i in invoices.values())
    paid_out = sum(s.net for s in statements.values())
    commission = sum(s.commission for s in statements.values())
    assert invoiced == paid_out + commission == D("24000.00") + revenue

    # The reconciliation's resale figures and the broker's book say the same.
    (row,) = result.resale
    assert (row["organization"], row["resale_revenue"], row["commission"], row["resale_net"]) == (
        broker.pk,
        st.gross,
        st.commission,
        st.net,
    )
    assert row["contract_cost"] == D("24000.00") and row["margin"] == st.net - D("24000.00")
    usd = book.total.money["USD"]
    assert (usd.revenue, usd.commission, usd.net, usd.cost) == (st.gross, st.commission, st.net, D("24000.00"))
    resold_hours = 2 * 48 + 12 + 2 * 180 + 3 * reclaimed_hours
    assert book.total.resold_seconds == resold_hours * 3600
    assert book.total.held_seconds == 8 * 31 * 86400
    per_contract = {c.lease.pk: c for c in book.contracts}
    assert per_contract[contracts[1].pk].resold_seconds == 3 * reclaimed_hours * 3600
    assert Lease.objects.filter(offer__is_resale=True).count() == 3
