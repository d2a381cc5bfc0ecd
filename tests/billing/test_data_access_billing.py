"""Billing of data-access sessions (issue 16): per second from the container's first `running` report to the end
(or `ends_at`), each second once across meter runs and a period close, invoice lines of their own, the provider's
statement, the balance's burn and unbilled months, and reconciliation."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from billing import invoicing, metering
from billing.balances import standing
from billing.models import DataAccessRecord, InvoiceLine, ProviderStatement
from billing.reconciliation import reconcile
from tests.billing.test_storage import APRIL, MARCH, PRICES
from tests.factories import online_server
from workloads.models import DataAccess, Workload

D = Decimal
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)
PRICE = D("0.0500")


def session(org, server, *, opened: datetime, started: datetime | None, ended: datetime | None = None, hours=4):
    made = DataAccess.objects.create(
        organization=org,
        server=server,
        price_per_hour=PRICE,
        currency=org.currency,
        created_at=opened,
        ends_at=opened + hours * HOUR,
    )
    Workload.objects.create(
        data_access=made,
        server=server,
        created_at=opened,
        started_at=started,
        state="running" if started else "pending",
    )
    if ended is not None:
        DataAccess.objects.filter(pk=made.pk).update(state="ended", ended_at=ended, end_reason="deleted")
        made.refresh_from_db()
    return made


@pytest.fixture
def server(bob):
    with time_machine.travel(MARCH - 3 * HOUR, tick=False):
        return online_server(organization=bob.org, offer=PRICES, name="da-1")


def seconds_of(made: DataAccess) -> Decimal:
    return sum((r.seconds for r in DataAccessRecord.objects.filter(data_access=made)), D(0))


def test_each_second_is_billed_once_across_meter_runs_and_a_period_close(alice, bob, server):
    """Opened in February, running from an hour before March to 1h20 after: 2h20 billed, an hour on February's
    invoice and 1h20 on March's, whatever the meter runs in between (some repeated, one going back)."""
    with time_machine.travel(MARCH - 3 * HOUR, tick=False) as clock:
        made = session(
            alice.org, server, opened=MARCH - 2.5 * HOUR, started=MARCH - HOUR, ended=MARCH + HOUR + 20 * 60 * SECOND
        )
        never = session(alice.org, server, opened=MARCH - 2 * HOUR, started=None, ended=MARCH)  # never ran
        for at in (MARCH - 30 * MINUTE, MARCH + 30 * MINUTE, MARCH + 30 * MINUTE, MARCH + 2 * HOUR):
            clock.move_to(at)
            metering.meter()
        invoicing.close_period("2026-02")
        clock.move_to(MARCH + HOUR)
        metering.meter()  # a run behind the last one adds nothing
        clock.move_to(APRIL + 2 * HOUR)
        invoicing.close_period("2026-03")
    assert seconds_of(made) == D(8400) and not DataAccessRecord.objects.filter(data_access=never).exists()
    slots = list(DataAccessRecord.objects.filter(data_access=made).order_by("slot_start").values_list("slot_start"))
    assert len(slots) == len(set(slots)) == 3  # the hour before March, March's first hour, and 20 minutes
    lines = {
        line.invoice.period: line
        for line in InvoiceLine.objects.filter(data_access=made).select_related("invoice").order_by("id")
    }
    assert set(lines) == {"2026-02", "2026-03"}
    february, march = lines["2026-02"], lines["2026-03"]
    assert (february.plan, february.unit, february.quantity, february.amount) == ("data_access", "hour", 1, D("0.05"))
    assert march.seconds == D(4800) and march.amount == D("0.07")  # 4800 s at 0.05 an hour: 0.0666...
    assert abs(march.exact_amount - D(4800) * PRICE / 3600) < D("1e-11")
    assert march.description == f"Data access without cards, session {made.pk} (server {server.pk})"
    assert march.sla_credit == 0 and march.lease_id is None and march.volume_id is None
    march_gross = ProviderStatement.objects.get(organization=bob.org, period="2026-03").gross
    assert march_gross == D("0.07")
    for period in ("2026-02", "2026-03"):
        result = reconcile(period, stripe_api=False)
        assert [m.kind for m in result.mismatches if "access" in m.kind or m.kind.startswith("statement")] == []
        assert result.counts["data_access_records"] >= 1


def test_billing_stops_at_ends_at_when_its_end_is_recorded_late_or_never(alice, server):
    with time_machine.travel(MARCH + 10 * HOUR, tick=False):
        late = session(alice.org, server, opened=MARCH, started=MARCH + 5 * MINUTE, hours=2)
        metering.meter()
    assert seconds_of(late) == D(7200 - 300)


def test_the_balance_burns_an_open_session_and_counts_what_it_ran(alice, server):
    type(alice.org).objects.filter(pk=alice.org.pk).update(created_at=MARCH - timedelta(days=30))
    alice.org.refresh_from_db()
    with time_machine.travel(MARCH + 30 * MINUTE, tick=False):
        made = session(alice.org, server, opened=MARCH, started=MARCH)
        money = standing(alice.org)
        assert money.burn_per_access == {made.pk: D("0.05")}
        assert money.this_month.per_access == {made.pk: D("0.03")}  # half an hour at 0.05, to the cent
    with time_machine.travel(MARCH + 3 * HOUR + 45 * MINUTE, tick=False):
        assert standing(alice.org).burn_per_access[made.pk] == D("0.01")  # 15 minutes left of its 4 hours: 0.0125


def test_a_tampered_record_is_listed_by_reconciliation(alice, server):
    with time_machine.travel(MARCH, tick=False) as clock:
        made = session(alice.org, server, opened=MARCH, started=MARCH + MINUTE, ended=MARCH + 3 * HOUR)
        clock.move_to(APRIL + 2 * HOUR)
        invoicing.close_period("2026-03")
    record = DataAccessRecord.objects.filter(data_access=made).order_by("slot_start")[1]
    DataAccessRecord.objects.filter(pk=record.pk).update(amount=record.amount + D("1"))
    kinds = {m.kind for m in reconcile("2026-03", stripe_api=False).mismatches}
    assert {"access_record", "access_line_amount", "statement_gross"} <= kinds
