"""The demo's past (issue 17, marketplace/demo_history.py): a fresh `seed_demo` has two closed months made by the
real services (invoices paid and one open, statements, a payout, a credit note, leases on every plan, a preempted
interruptible lease), telemetry for the last days (busy where leased, idle elsewhere), reconciliation finds nothing
wrong, and the customer's invoices and the provider's earnings pages show it."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.models import Organization, User
from billing.models import BalanceEntry, CreditNote, Invoice, InvoiceLine, Payout, ProviderStatement, UsageRecord
from billing.reconciliation import reconcile
from inventory import telemetry
from inventory.models import GpuHealthEvent
from marketplace.demo_history import months
from scheduler.models import Allocation, Lease


@pytest.fixture
def demo(db) -> str:
    out = StringIO()
    call_command("seed_demo", stdout=out)
    return out.getvalue()


def org(name: str) -> Organization:
    return Organization.objects.get(name=name)


def test_a_fresh_demo_has_two_closed_months_made_by_the_services(demo):
    span = months(timezone.now())
    a, b = span.first.label, span.second.label
    invoices = {
        (i.organization.name, i.period): i for i in Invoice.objects.select_related("organization").order_by("pk")
    }
    assert {(name, period): i.state for (name, period), i in invoices.items()} == {
        ("Demo Labs", a): "paid",
        ("Qiming Research Lab", a): "paid",
        ("Demo Labs", b): "paid",
        ("Qiming Research Lab", b): "paid",
        ("Hengtai Enterprise AI", b): "open",  # postpaid, not due yet
    }
    assert all(i.number and i.total > 0 and i.issued_at >= span.first.end for i in invoices.values())
    # The prepaid ones were paid from the balance (the ledger's settlements), at the close.
    settled = BalanceEntry.objects.filter(kind="settlement").values_list("invoice__number", flat=True)
    assert sorted(settled) == sorted(i.number for i in invoices.values() if i.state == "paid")
    # Every plan was billed, and a lease was preempted.
    plans = set(InvoiceLine.objects.values_list("plan", flat=True))
    assert plans == {"card_hour", "server_month", "pflops_year"}
    assert Lease.objects.filter(interruptible=True, state="preempted").count() == 1
    # Statements of both months for both providers; one payout, by bank, for Bob IDC's first month.
    statements = set(ProviderStatement.objects.values_list("organization__name", "period"))
    assert statements == {(p, m) for p in ("Bob IDC", "Shenzhen Compute") for m in (a, b)}
    [payout] = Payout.objects.select_related("statement__organization")
    assert (payout.statement.organization.name, payout.statement.period, payout.method) == ("Bob IDC", a, "bank")
    assert payout.statement.state == "paid" and payout.amount == payout.statement.net > 0
    # A credit note for the failed card, on Demo Labs' first invoice, naming its lease; back on the balance.
    [note] = CreditNote.objects.all()
    assert note.invoice == invoices[("Demo Labs", a)] and note.lease_id and "failed" in note.reason
    assert BalanceEntry.objects.filter(kind="credit_note", credit_note=note, amount=note.amount).exists()
    # The card failed (its agent's report), the lease moved to another card, the card was healthy again.
    assert Allocation.objects.filter(lease=note.lease).count() == 3
    events = list(GpuHealthEvent.objects.order_by("at").values_list("to_health", flat=True))
    assert events == ["failed", "healthy"]
    # The prepaid demo customer has money left, after its bank transfers.
    labs = BalanceEntry.objects.filter(organization=org("Demo Labs"))
    assert labs.filter(kind="bank_transfer").count() == 3
    assert sum(e.amount for e in labs) > 5000
    # Provider earnings of this month are metered already.
    assert UsageRecord.objects.filter(slot_start__gte=span.current.start).exists()
    # Nothing the reconciliation would object to.
    for label in (a, b):
        result = reconcile(label, stripe_api=False)
        assert result.ok, [m.as_dict() for m in result.mismatches]
    assert "closed" in demo and "credit note" in demo


def test_the_charts_have_the_last_days_busy_where_leased_and_idle_elsewhere(demo):
    now = timezone.now()
    with connection.cursor() as cursor:
        for table, since, least in (
            (telemetry.ONE_HOUR, now - timedelta(days=6), 64 * 24 * 5),
            (telemetry.ONE_MINUTE, now - timedelta(hours=20), 64 * 60 * 19),
            (telemetry.RAW, now - timedelta(minutes=50), 64 * 6 * 45),
        ):
            column = "ts" if table == telemetry.RAW else "bucket"
            cursor.execute(f"SELECT count(*) FROM {table} WHERE {column} >= %s", [since])  # noqa: S608
            assert cursor.fetchone()[0] >= least, table
        # Hengtai's A800 server has been rented since last month: busy; a card never rented: idle.
        cursor.execute(
            f"""SELECT bool_or(EXISTS (SELECT 1 FROM scheduler_allocation a WHERE a.gpu_id = t.gpu_id
                                       AND a.period @> t.bucket)) AS leased,
                       avg(utilization_pct), max(utilization_pct)
                FROM {telemetry.ONE_HOUR} t WHERE bucket >= %s
                GROUP BY EXISTS (SELECT 1 FROM scheduler_allocation a WHERE a.gpu_id = t.gpu_id
                                 AND a.period @> t.bucket)""",  # noqa: S608
            [now - timedelta(days=6)],
        )
        rows = {leased: (avg, top) for leased, avg, top in cursor.fetchall()}
    assert rows[True][0] > 85
    assert rows[False][1] < 1


def test_seeding_again_changes_nothing(demo):
    counts = [m.objects.count() for m in (Invoice, CreditNote, Payout, ProviderStatement, BalanceEntry, Lease)]
    out = StringIO()
    call_command("seed_demo", stdout=out)
    assert [m.objects.count() for m in (Invoice, CreditNote, Payout, ProviderStatement, BalanceEntry, Lease)] == counts
    assert "past is not added" not in out.getvalue()


def test_the_customer_sees_its_invoices_and_the_provider_its_statements_and_payout(demo):
    span = months(timezone.now())
    client = Client()
    client.force_login(User.objects.get(email="customer@suanli.local"))
    page = client.get("/invoices/")
    assert page.status_code == 200
    text = page.content.decode()
    for invoice in Invoice.objects.filter(organization=org("Demo Labs")):
        assert invoice.number in text
    first = Invoice.objects.get(organization=org("Demo Labs"), period=span.first.label)
    detail = client.get(f"/invoices/{first.pk}/").content.decode()
    assert CreditNote.objects.get().number in detail

    client.force_login(User.objects.get(email="enterprise@suanli.local"))
    [open_invoice] = Invoice.objects.filter(organization=org("Hengtai Enterprise AI"))
    text = client.get("/invoices/").content.decode()
    assert open_invoice.number in text and "Open" in text

    client.force_login(User.objects.get(email="bob@suanli.local"))
    page = client.get("/provider/earnings/")
    assert page.status_code == 200
    text = page.content.decode()
    for statement in ProviderStatement.objects.filter(organization=org("Bob IDC")):
        assert statement.period in text and str(statement.net) in text
    assert str(Payout.objects.get().amount) in text
