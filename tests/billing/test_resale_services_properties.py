"""Resale money over random histories driven through the scheduler's services (issue 20).

The broker of tests/billing/resale_support.py holds two 2-card servers of two providers for March and resells each
by the card-hour (4.00, interruptible 2.00; the renter paying in CNY gets them converted). A history is a list of
steps at random instants of the month: three renters renting one or two cards (on demand or interruptibly) from
either offer, resizing, ending, and the broker taking interruptible cards back (`resale_reclaim`, then run_leases),
each refused or done as the services decide (placement keeps every resale inside the broker's free held cards).
After the month closes:

- every resale allocation lies inside a contract allocation of its card, and no two resales share a card-second;
- the renters are charged exactly what their resale allocations held at their prices, with the broker named as
  provider, and the broker's statement is that revenue less the 15 % commission, to the cent;
- the providers' statements are their contracts alone (9,000.00 each, resale or not);
- the reconciliation finds nothing, and the broker's book holds the same seconds and money.

Few examples by default, more under the slow marker.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import transaction
from django.db.models import Sum
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.errors import DomainError
from billing import rating
from billing.broker import broker_book
from billing.invoicing import close_period
from billing.models import ProviderStatement, UsageRecord
from billing.reconciliation import reconcile
from scheduler import resale, services
from scheduler.lifecycle import leases_run
from scheduler.models import Allocation, LeaseState
from tests.billing.resale_support import MONTH, SERVER_MONTH_PRICE, broker_world

D = Decimal
NOTICE = 120

steps = st.one_of(
    st.tuples(st.just("rent"), st.integers(0, 2), st.integers(0, 1), st.integers(1, 2), st.booleans()),
    st.tuples(st.just("resize"), st.integers(0, 7), st.integers(1, 2)),
    st.tuples(st.just("end"), st.integers(0, 7)),
    st.tuples(st.just("reclaim"), st.integers(0, 1), st.integers(1, 2)),
)
histories = st.lists(
    st.tuples(st.integers(1, 36 * 3600), steps), min_size=1, max_size=14
)  # (seconds after the previous step, step)


def run(history) -> dict[str, int]:
    with (
        override_settings(SUANLI_PREEMPTION_NOTICE_SECONDS=NOTICE, SUANLI_TAX_RATE=D(0), SUANLI_TAKE_RATE=D("0.15")),
        transaction.atomic(),
    ):
        seen = check(history)
        transaction.set_rollback(True)
    return seen


def check(history) -> dict[str, int]:
    world = broker_world(publish=False)
    offers = []
    with time_machine.travel(world.period.start, tick=False) as clock:
        for contract in world.contracts:
            offers.append(
                resale.resale_offer_create(
                    org=world.broker,
                    lease=contract,
                    prices={"card_hour": D("4.00")},
                    interruptible_prices={"card_hour": D("2.00")},
                )
            )
        leases = []
        now = world.period.start
        for wait, step in history:
            now = min(now + timedelta(seconds=wait), world.period.end - timedelta(hours=1))
            clock.move_to(now)
            leases_run()
            try:
                if step[0] == "rent":
                    _, renter, offer, cards, interruptible = step
                    leases.append(
                        services.lease_create(
                            org=world.renters[renter],
                            plan="card_hour",
                            gpu_count=cards,
                            offer=offers[offer],
                            interruptible=interruptible,
                        )
                    )
                elif step[0] == "resize" and leases:
                    lease = leases[step[1] % len(leases)]
                    lease.refresh_from_db()
                    services.lease_resize(lease=lease, gpu_count=step[2])
                elif step[0] == "end" and leases:
                    lease = leases[step[1] % len(leases)]
                    lease.refresh_from_db()
                    services.lease_end(lease=lease)
                elif step[0] == "reclaim":
                    resale.resale_reclaim(offer=offers[step[1]], gpu_count=step[2])
            except DomainError:
                pass  # refused as the services decide (no free held card, a lease that ended, nothing to reclaim)
        clock.move_to(now + timedelta(seconds=NOTICE + 1))
        leases_run()
        for lease in leases:
            lease.refresh_from_db()
            if lease.state in (LeaseState.ACTIVE, LeaseState.SCHEDULED):
                services.lease_end(lease=lease)
        clock.move_to(world.period.end + timedelta(hours=1))
        close_period(MONTH)
        result = reconcile(MONTH, stripe_api=False)
        book = broker_book(org=world.broker, first=date(2026, 3, 1), last=date(2026, 3, 31))
    assert result.ok, [m.as_dict() for m in result.mismatches]

    # Every resale allocation inside its card's contract allocation; what each held, at its price, per currency.
    resold = list(Allocation.objects.filter(backing__isnull=False).select_related("backing", "lease"))
    expected: dict[str, Decimal] = defaultdict(Decimal)
    seconds = D(0)
    for a in resold:
        assert a.gpu_id == a.backing.gpu_id and a.backing.lease.organization_id == world.broker.pk
        assert a.backing.period.lower <= a.period.lower and a.period.upper <= a.backing.period.upper
        held = D((a.period.upper - a.period.lower).total_seconds())
        expected[a.lease.currency] += a.unit_price * held / 3600
        seconds += held
    records = UsageRecord.objects.filter(allocation__backing__isnull=False)
    assert set(records.values_list("provider_id", flat=True)) <= {world.broker.pk}
    revenue = dict(records.values("currency").annotate(a=Sum("amount")).values_list("currency", "a"))
    assert set(revenue) == {c for c, v in expected.items() if v}
    statements = {(s.organization_id, s.currency): s for s in ProviderStatement.objects.filter(period=MONTH)}
    for currency, amount in revenue.items():
        assert abs(amount - expected[currency]) < D("1e-9")
        st_ = statements[(world.broker.pk, currency)]
        assert st_.gross == rating.to_money(amount) and st_.commission == rating.to_money(st_.gross * D("0.15"))
        assert st_.net == st_.gross - st_.commission
        assert book.total.money[currency].revenue == st_.gross
        assert book.total.money[currency].net == st_.net
    for provider in world.providers:
        assert statements[(provider.pk, "USD")].gross == SERVER_MONTH_PRICE
    assert book.total.resold_seconds == seconds
    assert book.total.held_seconds == 4 * 31 * 86400
    assert book.total.money["USD"].cost == 2 * SERVER_MONTH_PRICE
    return {
        "resold": len(resold),
        "leases": len(leases),
        "preempted": sum(1 for lease in leases if lease.state == LeaseState.PREEMPTED),
        "currencies": len(revenue),
    }


def test_a_history_that_rents_resizes_reclaims_and_ends(db):
    """One fixed history, so each kind of step is taken whatever hypothesis draws: two renters on each offer (one
    in CNY, one interruptibly), a resize within the held cards, a rent refused for want of free held cards, the broker
    taking its cards back from the interruptible lease (preempted after the notice), and an end."""
    seen = run(
        [
            (3600, ("rent", 0, 0, 2, False)),  # both held cards of server 0
            (3600, ("rent", 2, 1, 1, True)),  # CNY, interruptible, on server 1
            (600, ("rent", 1, 0, 1, False)),  # refused: server 0's held cards are all resold
            (7200, ("resize", 0, 1)),  # the first lease gives a card back
            (600, ("rent", 1, 0, 1, False)),  # which the second renter now gets
            (1800, ("reclaim", 1, 1)),  # the broker takes server 1's card back
            (3600, ("rent", 1, 1, 1, False)),  # after the notice the card is free to resell again
            (86400, ("end", 0)),
        ]
    )
    assert seen == {"resold": 5, "leases": 4, "preempted": 1, "currencies": 2}, seen


@pytest.mark.django_db
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_resale_through_the_services_adds_up(history):
    run(history)


@pytest.mark.slow
@pytest.mark.django_db
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories)
def test_resale_through_the_services_adds_up_over_many_histories(history):
    run(history)
