"""close_period: invoices per customer and currency, gap-free numbers, SLA credits, tax, immutability, statements,
credit notes, overdue hold; the invoice API."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, transaction

from billing import invoicing
from billing.models import Invoice, InvoiceLine, ProviderStatement
from scheduler import services
from tests.factories import GpuHealthEventFactory, ProviderTermsFactory, online_server

MARCH = datetime(2026, 2, 28, 16, 0, tzinfo=UTC)  # 2026-03-01 00:00 in Asia/Shanghai, the platform clock
APRIL = datetime(2026, 3, 31, 16, 0, tzinfo=UTC)
PRICES = {"card_hour_price": Decimal("2.5000"), "server_month_price": Decimal("12000.0000")}


@pytest.fixture
def clock():
    with time_machine.travel(MARCH, tick=False) as traveller:
        yield traveller


@pytest.fixture
def march(clock, alice, bob, settings):
    """Alice rents a whole server for March and 2 cards for 5 hours on the 10th; bob provides both."""
    settings.SUANLI_TAX_RATE = Decimal("0.06")
    servers = [online_server(organization=bob.org, offer=PRICES, name=f"m-{i}") for i in range(2)]
    month = services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=APRIL)
    clock.move_to(MARCH + timedelta(days=9, hours=10))
    hours = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    clock.move_to(MARCH + timedelta(days=9, hours=15))
    services.lease_end(lease=hours)
    return {"servers": servers, "month": month, "hours": hours}


def test_a_month_is_refused_until_it_is_over_then_invoiced_once(march, clock, alice):
    with pytest.raises(CommandError, match="not over yet"):
        call_command("close_period", "2026-03")
    clock.move_to(APRIL + timedelta(hours=1))
    assert invoicing.close_period("2026-03") == {"invoices": 1, "statements": 1}
    assert invoicing.close_period("2026-03") == {"invoices": 0, "statements": 0}
    invoice = Invoice.objects.get(organization=alice.org)
    assert (invoice.number, invoice.state, invoice.period, invoice.currency) == ("INV-000001", "open", "2026-03", "USD")
    lines = {line.plan: line for line in invoice.lines.all()}
    assert lines["server_month"].amount == Decimal("12000.00")
    assert lines["server_month"].quantity == Decimal("1.000000")  # one server-month, the whole of March
    assert lines["card_hour"].amount == Decimal("25.00") and lines["card_hour"].quantity == Decimal("10.000000")
    assert invoice.subtotal == Decimal("12025.00")
    assert invoice.tax == Decimal("721.50") and invoice.total == Decimal("12746.50")


def test_numbers_run_without_gaps_across_organisations(march, clock, charlie, bob):
    online_server(organization=bob.org, offer=PRICES, name="charlie-box")
    clock.move_to(MARCH + timedelta(days=20))
    services.lease_create(org=charlie.org, plan="card_hour", gpu_count=1, end_at=MARCH + timedelta(days=21))
    clock.move_to(APRIL + timedelta(days=1))
    invoicing.close_period("2026-03")
    assert sorted(Invoice.objects.values_list("number", flat=True)) == ["INV-000001", "INV-000002"]


def test_a_finalised_invoice_never_changes_below_the_views(march, clock):
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get()
    for change in (
        lambda: Invoice.objects.filter(pk=invoice.pk).update(total=Decimal("1.00"), subtotal=Decimal("1.00")),
        lambda: InvoiceLine.objects.filter(invoice=invoice).update(amount=Decimal("0.01")),
        lambda: InvoiceLine.objects.filter(invoice=invoice).delete(),
        lambda: Invoice.objects.filter(pk=invoice.pk).delete(),
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            change()
    # Its life after issue may move: paid.
    Invoice.objects.filter(pk=invoice.pk).update(state="paid", paid_at=APRIL)
    assert Invoice.objects.get().total == Decimal("12746.50")


def test_down_time_beyond_the_sla_is_credited_and_charged_back_to_the_provider(march, clock, bob):
    settings_take = Decimal("0.20")
    ProviderTermsFactory(organization=bob.org, take_rate=settings_take)
    gpu = march["month"].allocations.first().gpu
    at = MARCH + timedelta(days=15)
    GpuHealthEventFactory(gpu=gpu, at=at, from_health="healthy", to_health="failed")
    GpuHealthEventFactory(gpu=gpu, at=at + timedelta(hours=6), from_health="failed", to_health="healthy")
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get()
    month_line = invoice.lines.get(plan="server_month")
    # One card of eight down 6 hours: 1/8 x 6/744 of the month is not charged ...
    assert month_line.amount == Decimal("11987.90")
    # ... and 6 card-hours of 5952 is 0.1 % down, under the 0.5 % the SLA allows: no credit.
    assert month_line.sla_credit == 0
    statement = ProviderStatement.objects.get(organization=bob.org)
    assert statement.take_rate == settings_take
    assert statement.gross == Decimal("12012.90")
    assert statement.commission == Decimal("2402.58") and statement.net == Decimal("9610.32")


def test_an_sla_breach_credits_the_line(clock, alice, bob, settings):
    settings.SUANLI_SLA_TARGET = Decimal("0.995")
    online_server(organization=bob.org, offer=PRICES, gpus=1, name="solo")
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1, end_at=MARCH + timedelta(hours=10))
    gpu = lease.allocations.get().gpu
    GpuHealthEventFactory(gpu=gpu, at=MARCH, from_health="healthy", to_health="failed")
    GpuHealthEventFactory(gpu=gpu, at=MARCH + timedelta(hours=1), from_health="failed", to_health="healthy")
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    line = InvoiceLine.objects.get()
    assert line.amount == Decimal("22.50")  # 9 of 10 hours
    assert line.sla_credit == Decimal("2.25")
    invoice = line.invoice
    assert invoice.credits == Decimal("2.25") and invoice.total == Decimal("20.25")
    assert ProviderStatement.objects.get().credits == Decimal("2.25")


def test_credit_notes_are_numbered_and_bounded(march, clock):
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    invoice = Invoice.objects.get()
    note = invoicing.credit_note_issue(invoice=invoice, amount=Decimal("100"), reason="goodwill")
    assert note.number == "CN-000001" and note.amount == Decimal("100.00")
    with pytest.raises(Exception, match="Between 0.01 and 12646.50"):
        invoicing.credit_note_issue(invoice=invoice, amount=Decimal("20000"), reason="too much")


def test_an_overdue_invoice_stops_new_leases_until_paid(march, clock, alice):
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    clock.move_to(APRIL + timedelta(days=20))
    out = io.StringIO()
    call_command("mark_overdue", stdout=out)  # the beat job's command, by hand
    assert out.getvalue().strip() == "overdue: 1"
    assert invoicing.invoices_mark_overdue() == 0  # idempotent
    response = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "billing_hold"
    Invoice.objects.update(state="paid", paid_at=APRIL + timedelta(days=20))
    assert invoicing.billing_hold_release(org_id=alice.org.pk)
    assert alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json").status_code == 201


def test_the_invoice_api_shows_own_invoices_only(march, clock, alice, charlie):
    clock.move_to(APRIL + timedelta(hours=1))
    invoicing.close_period("2026-03")
    listing = alice.api.get("/api/v1/invoices/").json()
    assert listing["count"] == 1
    invoice_id = listing["results"][0]["id"]
    body = alice.api.get(f"/api/v1/invoices/{invoice_id}/").json()
    assert body["number"] == "INV-000001" and body["total"] == "12746.50" and body["currency"] == "USD"
    assert {line["plan"] for line in body["lines"]} == {"server_month", "card_hour"}
    assert set(body["lines"][0]) >= {"lease", "plan", "quantity", "unit", "unit_price", "amount"}
    assert charlie.api.get(f"/api/v1/invoices/{invoice_id}/").status_code == 404
    assert charlie.api.get("/api/v1/invoices/").json()["count"] == 0


def test_the_usage_api_shows_cost_so_far(march, clock, alice, charlie):
    lease = march["hours"]
    body = alice.api.get(f"/api/v1/leases/{lease.pk}/usage/").json()
    assert body["amount"] == "25.00" and body["currency"] == "USD" and body["lines"][0]["unit"] == "card-hour"
    assert charlie.api.get(f"/api/v1/leases/{lease.pk}/usage/").status_code == 404


def test_a_bad_period_is_a_clear_error():
    with pytest.raises(CommandError, match="YYYY-MM"):
        call_command("close_period", "2026-13")
